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

import gzip

import nibabel as nib
import numpy as np
import pytest

from cmrsynth.data.nifti import check_label, load_volume, save_slice
from cmrsynth.errors import CMRDataError


def _save(path, array, zooms=(1.5, 1.5, 10.0)):
    nib.save(nib.Nifti1Image(array, np.diag([*zooms, 1.0])), str(path))
    return path


def test_loads_3d_volume_with_spacing(tmp_path):
    data, spacing = load_volume(_save(tmp_path / "v.nii.gz", np.ones((6, 5, 4), np.int16)))
    assert data.shape == (6, 5, 4) and data.dtype == np.float32
    assert spacing == pytest.approx((1.5, 1.5, 10.0))


def test_picks_a_frame_of_a_4d_cine(tmp_path):
    cine = np.stack([np.full((4, 4, 3), t, np.int16) for t in range(5)], axis=-1)
    _save(tmp_path / "c.nii.gz", cine)
    data, _ = load_volume(tmp_path / "c.nii.gz", time_index=3)
    assert data.shape == (4, 4, 3) and float(data.mean()) == 3.0
    with pytest.raises(CMRDataError, match="frame 7 requested but the file has 5 frames"):
        load_volume(tmp_path / "c.nii.gz", time_index=7)


def test_4d_where_3d_expected(tmp_path):
    path = tmp_path / "c.nii.gz"
    _save(path, np.zeros((4, 4, 3, 2), np.int16))
    with pytest.raises(CMRDataError, match="4D image of shape") as err:
        load_volume(path)
    assert str(path) in str(err.value)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate data" * 10)
    with pytest.raises(CMRDataError, match="corrupt or truncated|not a readable") as err:
        load_volume(path)
    assert "bad.nii.gz" in str(err.value)


def test_truncated_nifti(tmp_path):
    path = _save(tmp_path / "v.nii.gz", np.random.default_rng(0).integers(0, 1000, (40, 40, 8)).astype(np.int16))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(CMRDataError, match="corrupt or truncated|not a readable") as err:
        load_volume(path)
    assert "v.nii.gz" in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_intensities(tmp_path, bad):
    data = np.ones((4, 4, 2), np.float32)
    data[1, 2, 1] = bad
    with pytest.raises(CMRDataError, match="1 NaN or Inf"):
        load_volume(_save(tmp_path / "v.nii.gz", data))


def test_missing_file(tmp_path):
    with pytest.raises(CMRDataError, match="file not found"):
        load_volume(tmp_path / "nope.nii.gz")


def test_check_label_errors_name_the_file(tmp_path):
    good = np.zeros((4, 4, 2))
    good[1, 1, 0] = 3
    check_label(good, "x.nii.gz", (4, 4, 2))
    with pytest.raises(CMRDataError, match=r"x\.nii\.gz: label shape \(4, 4, 2\) does not match image shape \(4, 5, 2\)"):
        check_label(good, "x.nii.gz", (4, 5, 2))
    with pytest.raises(CMRDataError, match=r"unknown label values \[5\]"):
        check_label(np.where(good > 0, 5, 0), "x.nii.gz")
    with pytest.raises(CMRDataError, match="empty mask"):
        check_label(np.zeros((4, 4, 2)), "x.nii.gz")


def test_saved_slice_has_plain_header(tmp_path):
    save_slice(tmp_path / "s.nii.gz", np.zeros((8, 8)), (2.5, 2.5, 10.0))
    img = nib.load(str(tmp_path / "s.nii.gz"))
    assert img.shape == (8, 8)
    np.testing.assert_allclose(img.affine, np.diag([2.5, 2.5, 10.0, 1.0]))
    assert img.header["descrip"].tobytes().strip(b"\x00") == b"" and img.header["db_name"].tobytes().strip(b"\x00") == b""
