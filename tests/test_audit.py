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
import shutil

import numpy as np
import pytest
import torch

from cmrsynth.audit import (attack_scores, audit_slices, leakage, load_encoder, mask_leakage, membership_table,
                            planted_copy_check, reconstruction_attack, release, with_calibrated)
from cmrsynth.benchmark import REPO
from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.prepare import PrepareConfig, prepare_cohort
from tests.generative.helpers import OBJECTIVES, tiny_generator


@pytest.fixture(scope="module")
def prepared(phantom_cohort_master, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "p32"
    prepare_cohort(read_acdc(phantom_cohort_master), out, PrepareConfig(size=32, fractions=(0.6, 0.2, 0.2)))
    return out


def test_audit_slices_take_roles_from_the_split(prepared):
    slices = audit_slices(prepared, per_patient=3)
    data = json.loads((prepared / "datalist.json").read_text())
    members = {e["patient"] for e in data["training"]}
    assert {e["patient"] for e in slices if e["role"] == "member"} == members
    assert {e["patient"] for e in slices if e["role"] == "non_member"}.isdisjoint(members)
    counts = {p: sum(e["patient"] == p for e in slices) for p in {e["patient"] for e in slices}}
    assert max(counts.values()) <= 3 and all("array" in e and "mask" in e for e in slices)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_attack_table_scores_every_attack_per_patient(prepared, objective):
    """One code path for every generator of the contract: DDPM and flow matching."""
    slices = audit_slices(prepared, per_patient=2)
    scores = attack_scores(tiny_generator(OBJECTIVES[objective]()), slices, levels=(0.05, 0.1), batch_size=4)
    assert set(scores) == {"loss_t50", "loss_t100", "pia_t50", "pia_t100", "secmi_t100", "midband_t100"}
    assert all(len(v) == len(slices) and np.isfinite(v).all() for v in scores.values())
    table = membership_table(scores, slices)
    assert table["loss_t50"]["members"] == 3 and table["loss_t50"]["non_members"] == 2
    assert 0.0 <= table["pia_t50"]["auc"]["value"] <= 1.0


def test_slice_level_and_calibrated_attacks_cover_every_attack(prepared):
    slices = audit_slices(prepared, per_patient=3)
    scores = with_calibrated(attack_scores(tiny_generator(OBJECTIVES["ddpm"]()), slices, levels=(0.1,), batch_size=8), slices)
    assert {"loss_t100", "loss_t100_cal", "midband_t100_cal"} <= set(scores)
    table = membership_table(scores, slices, level="slice")
    m = table["loss_t100_cal"]
    assert (m["members"], m["non_members"]) == (3, 2)  # intervals resample patients, not slices
    assert m["member_scores"] + m["non_member_scores"] == len(slices)
    assert {"tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "auc"} <= set(m)


def test_mask_generator_is_attacked_through_the_contract_on_real_masks(prepared):
    """The mask generator's data are the real masks (one-hot), its condition the class: the same attacks apply."""
    slices = audit_slices(prepared, per_patient=2)
    generator = tiny_generator(OBJECTIVES["ddpm"](), in_channels=4, out_channels=4, mask_mode="none")
    scores = attack_scores(generator, slices, levels=(0.1,), batch_size=8)
    assert all(len(v) == len(slices) and np.isfinite(v).all() for v in scores.values())
    other = attack_scores(tiny_generator(OBJECTIVES["ddpm"](), in_channels=4, out_channels=4, mask_mode="none", seed=1),
                          slices, levels=(0.1,), batch_size=8)
    assert not np.allclose(scores["loss_t100"], other["loss_t100"])  # the scores come from the network


def test_mask_leakage_counts_copies_of_training_masks():
    rng = np.random.default_rng(0)

    def blob():
        mask = np.zeros((12, 12), int)
        top, left = rng.integers(0, 4, 2)
        mask[top:top + rng.integers(3, 9), left:left + rng.integers(3, 9)] = rng.integers(1, 4)
        return mask

    train, hold = [{"mask": blob()} for _ in range(30)], [{"mask": blob()} for _ in range(20)]
    synthetic = [{"mask": blob()} for _ in range(10)] + [dict(e) for e in train[:3]]
    out = mask_leakage(synthetic, train, hold)
    assert out["exact_copies"] >= 3 and out["synthetic"] == 13
    assert out["near_copies"] >= 3 or out["threshold"] >= 0.999  # copies beat every held-out mask unless one is a copy too


def test_leakage_flags_copied_images_and_masks():
    rng = np.random.default_rng(0)
    train, holdout = rng.normal(0, 1, (50, 8, 8)), rng.normal(0, 1, (30, 8, 8))
    masks = rng.integers(0, 4, (50, 8, 8))
    synthetic = np.concatenate([rng.normal(0, 1, (20, 8, 8)), train[:5]])
    out = leakage(synthetic, train, holdout, np.concatenate([masks[20:40], masks[:5]]), masks[:20], masks[40:])
    assert out["pixel"]["near_copies"] >= 5 and out["mask_dice_to_nearest_train"]["exact_copies"] == 5


def test_feature_leakage_catches_copies_that_pixel_distance_misses():
    rng = np.random.default_rng(0)
    train, holdout = rng.normal(0, 1, (50, 8, 8)), rng.normal(0, 1, (30, 8, 8))
    synthetic = np.concatenate([rng.normal(0, 1, (20, 8, 8)), train[:5] + 3.0])  # brightened training copies
    centred = lambda x: x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(1, keepdims=True)  # noqa: E731
    out = leakage(synthetic, train, holdout, encoder=centred)
    assert out["pixel"]["near_copies"] == 0
    assert out["feature"]["near_copies"] == 5 and out["feature"]["synthetic"] == 25


def test_planted_copy_check_measures_sensitivity_and_specificity():
    rng = np.random.default_rng(0)
    train, holdout, honest = (rng.normal(0, 1, (k, 8, 8)) for k in (60, 40, 30))
    centred = lambda x: x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(1, keepdims=True)  # noqa: E731
    out = planted_copy_check(honest, train, holdout, n=10, noise=(0.1, 3.0), encoder=centred)
    for space in ("pixel", "feature"):
        assert out[space]["sensitivity"]["exact"] == 1.0 and out[space]["sensitivity"]["noise_0.1"] == 1.0
        assert out[space]["specificity"] >= 0.9
    assert out["pixel"]["sensitivity"]["noise_3"] < 0.5  # noise louder than the image: no longer a copy


def test_load_encoder_gives_pooled_features_of_a_trained_segmenter(tmp_path):
    from monai.bundle import ConfigParser

    bundle = REPO / "bundles" / "seg_utility"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "common.yaml"))
    parser.update({"bundle_root": str(tmp_path), "device": "$torch.device('cpu')"})
    (tmp_path / "models").mkdir()
    torch.save(parser.get_parsed_content("network").state_dict(), tmp_path / "models" / "model.pt")
    features = load_encoder(bundle, tmp_path)(np.random.default_rng(0).normal(0, 1, (3, 64, 64)).astype(np.float32))
    assert features.shape[0] == 3 and features.ndim == 2 and np.isfinite(features).all()
    with pytest.raises(Exception, match="model.pt"):
        load_encoder(bundle, tmp_path / "missing")


def test_reconstruction_attack_catches_a_generator_that_redraws_its_members(prepared, tmp_path):
    import nibabel as nib

    chosen = audit_slices(prepared, per_patient=2, load=False)
    assert all("array" not in e for e in chosen) and {e["role"] for e in chosen} == {"member", "non_member"}
    (prepared / "datalist_reconstruction.json").write_text(json.dumps({"audit": chosen}))
    syn, rng = tmp_path / "drawn", np.random.default_rng(0)
    (syn / "images").mkdir(parents=True)
    entries, provenance = [], {}
    for i, e in enumerate(chosen):  # members redrawn almost exactly, non-members drawn anew
        img = nib.load(prepared / e["image"])
        real = np.asarray(img.dataobj, np.float32)
        drawn = real + rng.normal(0, 0.05, real.shape) if e["role"] == "member" else rng.uniform(-1, 1, real.shape)
        nib.save(nib.Nifti1Image(drawn.astype(np.float32), img.affine), syn / "images" / f"s{i}.nii.gz")
        entries.append({"image": f"images/s{i}.nii.gz", "synthetic_id": f"s{i}"})
        provenance[f"s{i}"] = {"index": i}
    (syn / "datalist.json").write_text(json.dumps({"training": entries}))
    (syn / "provenance.json").write_text(json.dumps(provenance))
    out = reconstruction_attack(prepared / "datalist_reconstruction.json", "audit", syn / "datalist.json")
    assert out["slices"] == len(chosen)
    assert out["membership"]["neg_rms"]["auc"]["value"] == 1.0 and out["membership"]["ssim"]["auc"]["value"] == 1.0
    assert out["median_per_slice"]["ssim"]["member"] > out["median_per_slice"]["ssim"]["non_member"]


def test_release_gate_removes_images_drawn_from_member_masks(prepared, tmp_path):
    import nibabel as nib

    data = json.loads((prepared / "datalist.json").read_text())
    syn, rng = tmp_path / "drawn", np.random.default_rng(0)
    (syn / "images").mkdir(parents=True)
    entries, provenance = [], {}
    for key in ("training", "test"):  # new images (noise) drawn from two members' and two non-members' masks
        for i in range(2):
            sid = f"{key}{i}"
            affine = nib.load(prepared / data[key][i]["image"]).affine
            nib.save(nib.Nifti1Image(rng.uniform(-1, 1, (32, 32)).astype(np.float32), affine), syn / "images" / f"{sid}.nii.gz")
            entries.append({"image": f"images/{sid}.nii.gz", "synthetic_id": sid})
            provenance[sid] = {"mask_datalist": str((prepared / "datalist.json").absolute()), "mask_key": key, "index": i}
    (syn / "datalist.json").write_text(json.dumps({"training": entries}))
    (syn / "provenance.json").write_text(json.dumps(provenance))
    record = release(syn / "datalist.json", prepared / "datalist.json", syn / "released.json")
    assert [r["synthetic_id"] for r in record["removed"]] == ["training0", "training1"]
    assert "own mask" in record["removed"][0]["reason"] and record["kept"] == 2


def test_release_gate_removes_new_images_on_copied_training_masks(prepared, tmp_path):
    import nibabel as nib

    syn = tmp_path / "synthetic"
    shutil.copytree(prepared, syn)
    data = json.loads((syn / "datalist.json").read_text())
    copied = [{k: e[k] for k in ("image", "label")} for e in data["training"][:3]]  # training masks, new images
    for e in copied:
        img = nib.load(syn / e["image"])
        noise = np.random.default_rng(0).uniform(-1, 1, img.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(noise, img.affine), syn / e["image"])
    (syn / "datalist.json").write_text(json.dumps({"training": copied}))
    record = release(syn / "datalist.json", prepared / "datalist.json", syn / "released.json")
    assert record["kept"] == 0 and all("its mask is closer to a training mask" in r["reason"] for r in record["removed"])
    assert all(r["mask_dice_to_nearest_train"] == 1.0 for r in record["removed"])


def test_release_gate_removes_planted_training_slices(prepared, tmp_path):
    syn = tmp_path / "synthetic"
    shutil.copytree(prepared, syn)
    data = json.loads((syn / "datalist.json").read_text())
    planted = data["training"][:3]
    honest = [{**e} for e in data["test"]]
    for e in honest:  # a "generator" that draws new images: the held-out slices, flipped
        import nibabel as nib

        img = nib.load(syn / e["image"])
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), syn / e["image"])
    (syn / "datalist.json").write_text(json.dumps({"training": planted + honest}))
    record = release(syn / "datalist.json", prepared / "datalist.json", syn / "released.json")
    kept = json.loads((syn / "released.json").read_text())["training"]
    assert len(record["removed"]) >= 3 and all(e not in kept for e in planted)
    assert record["kept"] == len(kept) and "holdout-to-train" in record["removed"][0]["reason"]
    assert (syn / "released_release_record.json").is_file()
    with pytest.raises(ValueError, match="beside datalist.json"):
        release(syn / "datalist.json", prepared / "datalist.json", tmp_path / "elsewhere.json")
