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
