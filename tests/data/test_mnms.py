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

import nibabel as nib
import numpy as np
import pytest

from cmrsynth.data.mnms import read_info_csv, read_mnms, read_mnms2
from cmrsynth.errors import CMRDataError
from cmrsynth.transforms import LoadCardiacFramed


def _write_mnms2020(root, pid="A1B2C3"):
    """A tiny M&Ms-2020-layout patient: 4D cine, labels only on ED (t=0) and ES (t=2), M&Ms label values."""
    folder = root / pid
    folder.mkdir(parents=True)
    cine = np.random.default_rng(0).integers(0, 500, (12, 12, 3, 4)).astype(np.int16)
    gt = np.zeros_like(cine, dtype=np.uint8)
    gt[4:8, 4:8, :, 0] = 1  # LV in M&Ms convention
    gt[2:4, 2:10, :, 0] = 3  # RV
    gt[5:7, 5:7, :, 2] = 1
    nib.save(nib.Nifti1Image(cine, np.diag([1.2, 1.2, 9.0, 1.0])), str(folder / f"{pid}_sa.nii.gz"))
    nib.save(nib.Nifti1Image(gt, np.diag([1.2, 1.2, 9.0, 1.0])), str(folder / f"{pid}_sa_gt.nii.gz"))
    csv = root / "info.csv"
    csv.write_text(f"External code,VendorName,Vendor,Centre,ED,ES,Pathology\n{pid},Siemens,A,1,0,2,HCM\n")
    return csv


def test_mnms2020_layout_with_info_csv(tmp_path):
    csv = _write_mnms2020(tmp_path)
    [r] = read_mnms(tmp_path, csv)
    assert (r.patient_id, r.group, r.vendor, r.centre) == ("A1B2C3", "HCM", "Siemens", "1")
    assert r.frames["ES"].time_index == 2
    d = LoadCardiacFramed()({"image": r.frames["ED"].image, "label": r.frames["ED"].label, "time_index": 0,
                             "label_convention": r.frames["ED"].label_convention})
    assert d["image"].shape == (12, 12, 3)
    assert (d["label"][5, 5] == 3).all() and (d["label"][2, 5] == 1).all()  # LV -> 3, RV -> 1


def test_mnms2020_patient_missing_from_csv(tmp_path):
    csv = _write_mnms2020(tmp_path)
    csv.write_text("External code,ED,ES\nOTHER,0,2\n")
    with pytest.raises(CMRDataError, match="'A1B2C3' is not in"):
        read_mnms(tmp_path, csv)


def test_info_csv_without_id_column(tmp_path):
    (tmp_path / "i.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CMRDataError, match="no patient id column"):
        read_info_csv(tmp_path / "i.csv")


def test_mnms2_empty_folder(tmp_path):
    with pytest.raises(CMRDataError, match="no patients"):
        read_mnms2(tmp_path)


@pytest.mark.real_data
def test_mnms2_sample_lv_lands_on_label_3(mnms2_root):
    [r] = read_mnms2(mnms2_root)
    assert r.patient_id == "001" and r.labelled
    raw = np.asanyarray(nib.load(str(r.frames["ED"].label)).dataobj)
    d = LoadCardiacFramed()({"image": r.frames["ED"].image, "label": r.frames["ED"].label,
                             "label_convention": r.frames["ED"].label_convention})
    # every voxel that M&Ms-2 calls LV (1) is canonical LV (3); its RV (3) becomes 1; myocardium stays 2
    np.testing.assert_array_equal(d["label"][raw == 1], 3)
    np.testing.assert_array_equal(d["label"][raw == 3], 1)
    np.testing.assert_array_equal(d["label"][raw == 2], 2)
    assert d["spacing"][0] == pytest.approx(1.484, abs=1e-3)
