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
"""cmrsynth.pipeline.release: MONAI datalist + nnU-Net v2 raw export with a data card."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from cmrsynth.data.nifti import save_slice
from cmrsynth.errors import CMRDataError
from cmrsynth.pipeline.release import export_release

CARD = {"generator": "ddpm_cmr", "bundle_version": "0.5.0", "image_size": 8, "weights_sha256": "ab" * 32, "sampler": "ddim",
        "source_training_patients": 3, "source_groups": {"NOR": 2, "DCM": 1},
        "training": "from scratch, 100 steps on the private cohort", "epsilon": None,
        "audit": {"strongest": "loss_t500", "strongest_auc": 0.55, "reconstruction_auc": 0.5},
        "usable_note": "yes", "intended_use": "research", "gate": {"candidates": 3, "removed": 1, "kept": 2}}


def _gated_set(root, n=2):
    entries = []
    for i in range(n):
        for folder, array, dtype in (("images", np.random.rand(8, 8), np.float32), ("labels", np.full((8, 8), 3), np.uint8)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            save_slice(root / folder / f"s{i}.nii.gz", array, (2.5, 2.5, 1.0), dtype)
        entries.append({"image": f"images/s{i}.nii.gz", "label": f"labels/s{i}.nii.gz", "synthetic_id": f"s{i}", "group": "NOR",
                        "phase": "ED", "source_mask": "/data/patient001_frame01_gt.nii.gz", "patient": "patient001"})
    (root / "datalist_released.json").write_text(json.dumps({"training": entries, "summary": {"mask_datalist": "/data/x"}}))
    return root / "datalist_released.json"


def test_release_writes_both_formats_and_a_card_without_identifiers(tmp_path):
    out = tmp_path / "release"
    result = export_release(_gated_set(tmp_path / "syn"), out, CARD)
    assert result == {"slices": 2, "nnunet_dataset": "Dataset501_CMRSynth"}
    nn = out / "nnUNet_raw" / "Dataset501_CMRSynth"
    ds = json.loads((nn / "dataset.json").read_text())
    assert ds["numTraining"] == 2 and ds["file_ending"] == ".nii.gz" and ds["channel_names"] == {"0": "MRI"}
    assert ds["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    assert sorted(p.name for p in (nn / "imagesTr").iterdir()) == ["cmrsynth_00000_0000.nii.gz", "cmrsynth_00001_0000.nii.gz"]
    assert np.asarray(nib.load(nn / "labelsTr" / "cmrsynth_00001.nii.gz").dataobj).max() == 3
    data = json.loads((out / "datalist.json").read_text())
    assert (out / data["training"][0]["image"]).is_file()
    for f in out.rglob("*"):
        if f.is_file():
            text = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
            assert b"patient001" not in text and b"/data/" not in text, f
    card = (out / "data_card.md").read_text()
    assert "3 patients by group" in card and '"NOR": 2' in card and "1 of 3 slices removed" in card
    assert "Training: from scratch, 100 steps on the private cohort" in card
    assert set(data["training"][0]) == {"image", "label", "synthetic_id", "group", "phase"}


def test_an_empty_gated_set_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "datalist_released.json"
    path.write_text(json.dumps({"training": []}))
    with pytest.raises(CMRDataError, match="kept no synthetic slice"):
        export_release(path, tmp_path / "release", CARD)
    assert not (tmp_path / "release").exists()
