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
"""cmrsynth.zoo: metadata schema, pack / install / verify with sha256, the shipped phantom weights."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from cmrsynth import zoo
from cmrsynth.errors import CMRDataError
from tests.conftest import REPO

BUNDLES = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/metadata.json"))
SHIPPED = sorted((REPO / "zoo" / "phantom").glob("*.zip"))


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_every_bundle_metadata_matches_the_shipped_schema(bundle):
    meta = zoo.validate_metadata(bundle)
    assert "optional_packages_version" not in meta, "MONAI deprecated the name; every run warned"


def test_a_metadata_without_a_required_field_is_refused_naming_it(tmp_path):
    bundle = tmp_path / "b"
    (bundle / "configs").mkdir(parents=True)
    meta = json.loads((BUNDLES[0] / "configs" / "metadata.json").read_text())
    del meta["intended_use"]
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CMRDataError, match="metadata.json: metadata does not match the bundle schema.*'intended_use' is a required"):
        zoo.validate_metadata(bundle)


def _trained_root(tmp_path):
    root = tmp_path / "run"
    (root / "models").mkdir(parents=True)
    torch.save({"ema": {"w": torch.arange(4.0)}}, root / "models" / "best_ema.pt")
    return root


def test_pack_then_install_round_trips_and_verifies(tmp_path):
    bundle = REPO / "bundles" / "ddpm_cmr"
    packed = zoo.pack(bundle, _trained_root(tmp_path), ["models/best_ema.pt"], tmp_path / "ddpm_cmr.zip")
    target = zoo.install(packed, tmp_path / "installed")
    assert (target / "configs" / "inference.yaml").read_text() == (bundle / "configs" / "inference.yaml").read_text()
    [entry] = zoo.verify(target)
    assert entry["path"] == "models/best_ema.pt" and entry["hash_type"] == "sha256" and len(entry["hash_val"]) == 64


def test_half_precision_packing_halves_the_weights_and_they_load_into_a_float32_network(tmp_path):
    root = tmp_path / "run"
    (root / "models").mkdir(parents=True)
    net = torch.nn.Linear(64, 64)
    torch.save({"ema": net.state_dict(), "card": {"groups": ["NOR"]}, "step": torch.tensor(3),
                "history": [torch.ones(2, dtype=torch.float64)]}, root / "models" / "best_ema.pt")
    full = zoo.pack(REPO / "bundles" / "ddpm_cmr", root, ["models/best_ema.pt"], tmp_path / "full.zip")
    half = zoo.pack(REPO / "bundles" / "ddpm_cmr", root, ["models/best_ema.pt"], tmp_path / "half.zip", half=True)
    size = {z: zipfile.ZipFile(z).getinfo("ddpm_cmr/models/best_ema.pt").file_size for z in (full, half)}
    assert size[half] < 0.6 * size[full]
    target = zoo.install(half, tmp_path / "installed")
    zoo.verify(target)
    state = torch.load(target / "models" / "best_ema.pt", weights_only=True)
    assert state["ema"]["weight"].dtype == torch.float16 and state["step"].dtype == torch.int64
    assert state["card"] == {"groups": ["NOR"]} and state["history"][0].dtype == torch.float64  # only float32 halves
    assert hasattr(state["ema"], "_metadata")  # the state dict stays a state dict
    loaded = torch.nn.Linear(64, 64)
    loaded.load_state_dict(state["ema"])
    x = torch.randn(8, 64)
    assert loaded.weight.dtype == torch.float32
    torch.testing.assert_close(loaded(x), net(x), atol=1e-2, rtol=1e-2)
    assert not torch.equal(loaded.weight, net.weight)


def test_half_precision_packing_of_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path):
    root = tmp_path / "run"
    (root / "models").mkdir(parents=True)
    (root / "models" / "best_ema.pt").write_text("not weights")
    with pytest.raises(CMRDataError, match="best_ema.pt: not a weights-only PyTorch checkpoint"):
        zoo.pack(REPO / "bundles" / "ddpm_cmr", root, ["models/best_ema.pt"], tmp_path / "b.zip", half=True)
    assert not (tmp_path / "b.zip").exists()


def test_half_precision_refuses_weights_float16_cannot_hold(tmp_path):
    root = tmp_path / "run"
    (root / "models").mkdir(parents=True)
    torch.save({"ema": {"scale": torch.tensor([1e6])}}, root / "models" / "best_ema.pt")
    with pytest.raises(CMRDataError, match=r"checkpoint.ema.scale holds values float16 cannot represent"):
        zoo.pack(REPO / "bundles" / "ddpm_cmr", root, ["models/best_ema.pt"], tmp_path / "b.zip", half=True)


def test_a_tampered_weight_file_is_refused_and_nothing_is_installed(tmp_path):
    packed = zoo.pack(REPO / "bundles" / "ddpm_cmr", _trained_root(tmp_path), ["models/best_ema.pt"], tmp_path / "b.zip")
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(packed) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("best_ema.pt"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(item, data)
    with pytest.raises(CMRDataError, match=r"best_ema.pt: sha256 .* does not match .* refusing to install"):
        zoo.install(tampered, tmp_path / "installed")
    assert not (tmp_path / "installed").exists()


def test_a_changed_config_or_an_unlisted_file_is_refused(tmp_path):
    packed = zoo.pack(REPO / "bundles" / "ddpm_cmr", _trained_root(tmp_path), ["models/best_ema.pt"], tmp_path / "b.zip")
    folder = zoo.install(packed, tmp_path / "installed")
    (folder / "configs" / "inference.yaml").write_text("run: ['$__import__(\"os\").system(\"true\")']\n")
    with pytest.raises(CMRDataError, match="inference.yaml: sha256 .* changed after packing"):
        zoo.verify(folder)
    folder = zoo.install(packed, tmp_path / "again")
    (folder / "configs" / "extra.yaml").write_text("x: 1\n")
    with pytest.raises(CMRDataError, match="extra.yaml: not listed when the bundle was packed"):
        zoo.verify(folder)


def test_a_zip_member_outside_its_folder_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("b/configs/metadata.json", "{}")
        z.writestr("../escaped.txt", "x")
    with pytest.raises(CMRDataError, match="points outside its folder"):
        zoo.install(evil, tmp_path / "installed")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_install_refuses_a_file_that_is_not_a_zip(tmp_path):
    bad = tmp_path / "bundle.zip"
    bad.write_text("not a zip")
    with pytest.raises(CMRDataError, match="bundle.zip: not a zip file"):
        zoo.install(bad, tmp_path / "installed")


def test_the_shipped_phantom_weights_are_small_verified_and_load_into_their_generators(tmp_path):
    from cmrsynth.generative import load_generator

    assert {p.stem for p in SHIPPED} == {"mask_generator", "ddpm_cmr", "fm_cmr", "ldm_cmr"}
    for packed in SHIPPED:
        assert packed.stat().st_size < 5 * 2**20, f"{packed.name}: the demo's weights must stay a few MB"
        root = zoo.install(packed, tmp_path / packed.stem)
        generator = load_generator(root, root, overrides={"image_size": 64}, checkpoint="best_ema.pt")
        assert generator.card is not None
