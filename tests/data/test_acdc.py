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

import pytest

from cmrsynth.data.acdc import parse_info_cfg, read_acdc
from cmrsynth.errors import CMRDataError


def test_reads_phantom_cohort(phantom_cohort_master):
    records = read_acdc(phantom_cohort_master)
    assert [r.group for r in records] == ["NOR", "DCM", "HCM", "MINF", "RV"]
    r = records[0]
    assert r.patient_id == "patient001" and r.labelled and set(r.frames) == {"ED", "ES"}
    assert r.frames["ED"].image.name == "patient001_frame01.nii.gz"
    assert r.height is not None and r.spacing is not None and r.spacing[2] == 10.0


def test_patient_without_labels_is_read_unlabelled(phantom_cohort):
    for gt in (phantom_cohort / "patient002").glob("*_gt.nii.gz"):
        gt.unlink()
    records = {r.patient_id: r for r in read_acdc(phantom_cohort)}
    assert not records["patient002"].labelled and records["patient001"].labelled


def test_missing_info_cfg(phantom_cohort):
    (phantom_cohort / "patient003" / "Info.cfg").unlink()
    with pytest.raises(CMRDataError, match=r"patient003/Info.cfg: missing Info.cfg"):
        read_acdc(phantom_cohort)


def test_missing_es_frame(phantom_cohort):
    es = parse_info_cfg(phantom_cohort / "patient004" / "Info.cfg")["ES"]
    (phantom_cohort / "patient004" / f"patient004_frame{int(es):02d}.nii.gz").unlink()
    with pytest.raises(CMRDataError, match="missing ES frame image"):
        read_acdc(phantom_cohort)


def test_info_cfg_without_es(tmp_path):
    (tmp_path / "Info.cfg").write_text("ED: 1\nGroup: NOR\n")
    with pytest.raises(CMRDataError, match="no ES entry"):
        parse_info_cfg(tmp_path / "Info.cfg")


def test_folder_without_patients(tmp_path):
    with pytest.raises(CMRDataError, match="no patient folders"):
        read_acdc(tmp_path)
    with pytest.raises(CMRDataError, match="cohort folder not found"):
        read_acdc(tmp_path / "absent")


@pytest.mark.real_data
def test_reads_real_acdc(acdc_root):
    records = read_acdc(acdc_root)
    assert len(records) == 70
    assert {r.group for r in records} == {"DCM", "HCM", "MINF", "NOR", "RV"}
    assert all(r.labelled for r in records)
