# Copyright (c) cmr-synth contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cmrsynth.errors import CMRDataError
from cmrsynth.generate import generate_images, generate_masks, sample_pairs
from cmrsynth.generative import ClassIndex, Generator
from cmrsynth.masks import plausibility
from tests.conftest import heart_mask
from tests.generative.helpers import OBJECTIVES, TargetOracle, ddpm_objective, tiny_generator


def _mask_generator(groups=()):
    return tiny_generator(ddpm_objective(steps=100), in_channels=4, out_channels=4, mask_mode="none", groups=groups)


def test_generate_masks_writes_a_shareable_datalist(tmp_path):
    summary = generate_masks(_mask_generator(["NOR", "HCM"]), tmp_path / "m", per_class=2, num_inference_steps=3,
                             keep_implausible=True, guidance_scale=2.0)
    d = json.loads((tmp_path / "m" / "datalist.json").read_text())
    assert summary["generated"] == summary["written"] == len(d["synthetic"]) == 8
    e = d["synthetic"][0]
    assert e["synthetic_id"] == "syn00000" and e["group"] == "NOR" and "patient" not in e
    mask = nib.load(tmp_path / "m" / e["label"])
    assert mask.shape == (16, 16) and set(np.unique(mask.get_fdata())) <= {0, 1, 2, 3}
    assert (tmp_path / "m" / "masks.png").is_file()
    assert summary["sampler"] == "ddim" and summary["nfe"] == 3 and summary["num_inference_steps"] == 3


def test_masks_per_slice_position_record_their_position_and_raw_plausibility(tmp_path):
    generator = tiny_generator(ddpm_objective(steps=100), in_channels=4, out_channels=4, mask_mode="none", groups=["NOR"],
                               positions=["basal", "apical"])
    summary = generate_masks(generator, tmp_path / "m", per_class=1, num_inference_steps=2, keep_implausible=True)
    entries = json.loads((tmp_path / "m" / "datalist.json").read_text())["synthetic"]
    assert [(e["phase"], e["position"]) for e in entries] == [("ED", "basal"), ("ED", "apical"), ("ES", "basal"), ("ES", "apical")]
    assert all(isinstance(e["plausible_before_postprocessing"], bool) for e in entries)
    assert 0.0 <= summary["plausibility_rate_before_postprocessing"] <= 1.0
    assert "lv_circularity" in entries[0] and "failed_checks_before_postprocessing" in summary


def test_implausible_masks_are_dropped_and_counted(tmp_path):
    summary = generate_masks(_mask_generator(), tmp_path / "m", per_class=4, num_inference_steps=2)
    n_ok = round(summary["plausibility_rate"] * 4)
    assert summary["written"] == n_ok and summary["generated"] == 4
    assert sum(summary["failed_checks"].values()) >= 4 - n_ok


def _real_masks(tmp_path):
    root = tmp_path / "masks"
    (root / "labels").mkdir(parents=True)
    entries = []
    for i in range(3):
        m = np.zeros((16, 16), np.uint8)
        m[4:12, 4:12] = 2
        m[6:10, 6:10] = 3
        nib.save(nib.Nifti1Image(m, np.eye(4)), str(root / "labels" / f"p{i}.nii.gz"))
        entries.append({"label": f"labels/p{i}.nii.gz", "patient": f"patient00{i}", "group": "DCM", "phase": "ES",
                        "spacing": [2.5, 2.5, 10.0]})
    (root / "datalist.json").write_text(json.dumps({"test": entries}))
    return root


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_generate_images_from_real_masks_keeps_provenance_private(tmp_path, objective):
    root = _real_masks(tmp_path)
    summary = generate_images(tiny_generator(OBJECTIVES[objective]()), root / "datalist.json", tmp_path / "out",
                              mask_key="test", num_inference_steps=2)
    d = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert summary["generated"] == 3 and len(d["training"]) == 3
    text = json.dumps(d)
    assert "patient00" not in text, "no patient id in the shareable datalist"
    img = nib.load(tmp_path / "out" / d["training"][0]["image"])
    assert img.shape == (16, 16) and -1 <= img.get_fdata().min() and img.get_fdata().max() <= 1
    assert img.header.get_zooms()[:2] == pytest.approx((2.5, 2.5))
    lab = np.asanyarray(nib.load(tmp_path / "out" / d["training"][0]["label"]).dataobj)
    assert (lab == np.asanyarray(nib.load(root / "labels" / "p0.nii.gz").dataobj)).all()
    assert "patient000" not in (tmp_path / "out" / d["training"][0]["image"]).read_bytes().decode("latin-1")
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["syn00002"]["source_label"].endswith("p2.nii.gz")


def test_generate_images_refuses_an_empty_datalist(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"synthetic": []}))
    with pytest.raises(ValueError, match="no entries under 'synthetic'"):
        generate_images(tiny_generator(ddpm_objective()), tmp_path / "d.json", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_generate_images_refuses_masks_outside_the_label_schema(tmp_path):
    root = _real_masks(tmp_path)
    bad = np.zeros((16, 16), np.uint8)
    bad[2:5, 2:5] = 7
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(root / "labels" / "p1.nii.gz"))
    with pytest.raises(CMRDataError, match=r"p1.nii.gz: label values \[7\] are outside the schema; allowed: 0 background"):
        generate_images(tiny_generator(ddpm_objective()), root / "datalist.json", tmp_path / "o", mask_key="test")
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        generate_images(tiny_generator(ddpm_objective()), root / "datalist.json", tmp_path / "o", mask_key="test", sampler="plms")
    assert not (tmp_path / "o").exists()


def test_reconstructions_are_scored_and_an_identity_codec_is_perfect(tmp_path):
    from cmrsynth.generate import reconstruct_images
    from cmrsynth.generative import AutoencoderCodec, IdentityCodec
    from tests.generative.test_codecs import tiny_autoencoder

    root = _real_masks(tmp_path)
    d = json.loads((root / "datalist.json").read_text())
    for i, e in enumerate(d["test"]):
        image = np.random.default_rng(i).uniform(-1, 1, (16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / f"image{i}.nii.gz"))
        e["image"] = f"image{i}.nii.gz"
    (root / "datalist.json").write_text(json.dumps(d))
    exact = reconstruct_images(IdentityCodec(), root / "datalist.json", tmp_path / "identity", key="test")
    assert exact["slices"] == 3 and exact["ssim_mean"] == pytest.approx(1.0) and exact["psnr_mean"] > 100
    lossy = reconstruct_images(AutoencoderCodec(tiny_autoencoder(), 4), root / "datalist.json", tmp_path / "ae", key="test")
    assert lossy["ssim_mean"] < 0.9 and lossy["psnr_mean"] < 40  # an untrained autoencoder loses the image
    d = json.loads((tmp_path / "ae" / "datalist.json").read_text())
    assert len(d["training"]) == 3 and "do not share" in d["description"] and (tmp_path / "ae" / "reconstructions.png").is_file()
    lab = np.asanyarray(nib.load(tmp_path / "ae" / d["training"][0]["label"]).dataobj)
    assert (lab == np.asanyarray(nib.load(root / "labels" / "p0.nii.gz").dataobj)).all()  # scored against the true mask


def _oracle_mask_generator(mask: np.ndarray, groups=("NOR", "HCM")) -> Generator:
    """A mask generator whose network knows one mask (one-hot in [-1, 1]): DDIM lands on it at any step count."""
    import torch

    objective = ddpm_objective()
    target = torch.nn.functional.one_hot(torch.from_numpy(mask).long(), 4).permute(2, 0, 1).float()[None] * 2 - 1
    return Generator(TargetOracle(objective, lambda x, t: target.expand_as(x)), objective, classes=ClassIndex(list(groups)),
                     data_channels=4, image_size=mask.shape[0])


def test_sample_pairs_writes_the_chain_and_reports_its_speed(tmp_path):
    mask = heart_mask(16, lv=3, wall=2, rv_gap=1, rv_radius=2)
    assert plausibility(mask)["plausible"]
    images = tiny_generator(ddpm_objective(), groups=["NOR", "HCM"])
    summary = sample_pairs(_oracle_mask_generator(mask), images, tmp_path / "pairs", num_pairs=5, batch_size=4,
                           network_batch=3, mask_steps=2, image_steps=1, spacing=2.5)
    d = json.loads((tmp_path / "pairs" / "datalist.json").read_text())
    assert summary["pairs"] == len(d["training"]) == 5 and summary["masks_drawn"] == 7  # 4, then the 1 missing + margin (network batch 3)
    assert summary["mask_plausibility_rate"] == 1.0 and summary["pairs_per_second"] > 0
    assert summary["mask"]["nfe"] == 2 and summary["image"]["nfe"] == 1
    assert set(summary["seconds_by_part"]) == {"mask_network", "mask_cleaning", "image_network", "writing"}
    assert [e["group"] for e in d["training"]] == ["NOR", "NOR", "HCM", "HCM", "NOR"]  # every class in turn
    e = d["training"][0]
    assert e["synthetic_id"] == "syn00000" and "patient" not in e
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "pairs" / e["label"]).dataobj), mask)
    image = nib.load(tmp_path / "pairs" / e["image"])
    assert image.shape == (16, 16) and image.header.get_zooms()[:2] == (2.5, 2.5)
    assert not (tmp_path / "pairs" / "provenance.json").exists() and (tmp_path / "pairs" / "samples.png").is_file()


def test_sample_pairs_stops_with_one_line_when_masks_are_not_plausible(tmp_path):
    empty = np.zeros((16, 16), np.uint8)
    with pytest.raises(CMRDataError, match="only 0 plausible masks in 8 draws"):
        sample_pairs(_oracle_mask_generator(empty), tiny_generator(ddpm_objective()), tmp_path / "pairs", num_pairs=4,
                     batch_size=4, max_draws=8, mask_steps=1, image_steps=1)
    assert not (tmp_path / "pairs").exists()  # nothing half-written
