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

import pytest

from cmrsynth.data.datalist import read_datalist_cohort
from cmrsynth.errors import CMRDataError


def _datalist(root, entries):
    path = root / "my_data.json"
    path.write_text(json.dumps({"training": entries}))
    return path


def test_user_datalist_groups_frames_by_patient(phantom_cohort):
    p = "patient001/patient001_frame01"
    entries = [
        {"image": f"cohort/{p}.nii.gz", "label": f"cohort/{p}_gt.nii.gz", "patient": "u1", "group": "NOR", "phase": "ED"},
        {"image": f"cohort/{p}.nii.gz", "label": f"cohort/{p}_gt.nii.gz", "patient": "u1", "phase": "ES"},
        {"image": f"cohort/{p}.nii.gz", "patient": "u2"},
    ]
    records = {r.patient_id: r for r in read_datalist_cohort(_datalist(phantom_cohort.parent, entries))}
    assert set(records["u1"].frames) == {"ED", "ES"} and records["u1"].group == "NOR" and records["u1"].labelled
    assert not records["u2"].labelled


def test_datalist_errors_name_the_problem(tmp_path):
    with pytest.raises(CMRDataError, match="datalist JSON not found"):
        read_datalist_cohort(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CMRDataError, match="invalid JSON"):
        read_datalist_cohort(tmp_path / "bad.json")
    with pytest.raises(CMRDataError, match="is empty: no patients"):
        read_datalist_cohort(_datalist(tmp_path, []))
    with pytest.raises(CMRDataError, match="image listed in my_data.json not found"):
        read_datalist_cohort(_datalist(tmp_path, [{"image": "x.nii.gz"}]))
    with pytest.raises(CMRDataError, match="has no 'image'"):
        read_datalist_cohort(_datalist(tmp_path, [{"label": "x.nii.gz"}]))


def test_load_section_reads_arrays_and_names_a_missing_section(tmp_path):
    import json

    import numpy as np

    from cmrsynth.data.datalist import load_section
    from cmrsynth.data.nifti import save_slice

    save_slice(tmp_path / "m.nii.gz", np.eye(4, dtype=np.uint8) * 3, (1.0, 1.0, 1.0), np.uint8)
    save_slice(tmp_path / "i.nii.gz", np.ones((4, 4), np.float32), (1.0, 1.0, 1.0))
    (tmp_path / "datalist.json").write_text(json.dumps({"test": [{"image": "i.nii.gz", "label": "m.nii.gz"}]}))
    (entry,) = load_section(tmp_path, "test")
    assert entry["mask"].dtype == np.uint8 and entry["mask"][1, 1] == 3 and entry["array"].sum() == 16
    with pytest.raises(CMRDataError, match="no 'training' section"):
        load_section(tmp_path / "datalist.json", "training")
    (tmp_path / "m.nii.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(CMRDataError, match="m.nii.gz: (corrupt|not a readable NIfTI)"):
        load_section(tmp_path, "test")
