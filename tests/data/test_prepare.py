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
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrsynth.data.acdc import parse_info_cfg, read_acdc
from cmrsynth.data.nifti import load_volume
from cmrsynth.data.prepare import PrepareConfig, main, prepare_cohort


def test_prepares_phantom_cohort(phantom_cohort_master, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_cohort(read_acdc(phantom_cohort_master), out, PrepareConfig(size=32, fractions=(0.6, 0.2, 0.2)))
    d = json.loads((out / "datalist.json").read_text())
    entries = d["training"] + d["validation"] + d["test"]
    assert summary["slices"] == len(entries) > 0
    e = d["training"][0]
    assert {"image", "label", "patient", "group", "phase", "slice", "spacing", "split", "role"} <= set(e)
    img, lab = nib.load(out / e["image"]), nib.load(out / e["label"])
    assert img.shape == lab.shape == (32, 32)
    assert img.header.get_zooms()[:2] == pytest.approx((5.0, 5.0))
    assert -1 <= img.get_fdata().min() < img.get_fdata().max() <= 1
    assert set(np.unique(lab.get_fdata())) <= {0, 1, 2, 3}
    assert set(d["roles"]["member"]) == {p for p, v in d["patients"].items() if v["split"] == "train"}
    assert not set(d["roles"]["member"]) & set(d["roles"]["non_member"])
    # slices per patient = labelled slices of its ED and ES volumes
    for r in read_acdc(phantom_cohort_master):
        expected = sum(int((load_volume(f.label)[0] > 0).any(axis=(0, 1)).sum()) for f in r.frames.values())
        assert summary["slices_per_patient"][r.patient_id] == expected


def test_central_slices_option(phantom_cohort_master, tmp_path):
    s = prepare_cohort(read_acdc(phantom_cohort_master), tmp_path / "p", PrepareConfig(size=32, n_central=2))
    assert set(s["slices_per_patient"].values()) == {4}


def test_unlabelled_patients_are_skipped_or_included(phantom_cohort, tmp_path):
    for gt in (phantom_cohort / "patient005").glob("*_gt.nii.gz"):
        gt.unlink()
    skipped = prepare_cohort(read_acdc(phantom_cohort), tmp_path / "a", PrepareConfig(size=32))
    assert skipped["skipped_unlabelled"] == 1 and "patient005" not in skipped["slices_per_patient"]
    kept = prepare_cohort(read_acdc(phantom_cohort), tmp_path / "b", PrepareConfig(size=32, include_unlabelled=True))
    d = json.loads((tmp_path / "b" / "datalist.json").read_text())
    unlabelled = [e for s in ("training", "validation", "test") for e in d[s] if e["patient"] == "patient005"]
    assert kept["slices_per_patient"]["patient005"] > 0 and all("label" not in e for e in unlabelled)


def _frame(cohort: Path, pid: str, phase: str = "ED", gt: bool = False) -> Path:
    number = int(parse_info_cfg(cohort / pid / "Info.cfg")[phase])
    return cohort / pid / f"{pid}_frame{number:02d}{'_gt' if gt else ''}.nii.gz"


def _rewrite(path: Path, fn) -> None:
    img = nib.load(str(path))
    data = fn(np.asanyarray(img.dataobj).copy())
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


def _corrupt_gzip(c):
    _frame(c, "patient002").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00not deflate" * 50)
    return _frame(c, "patient002"), "corrupt or truncated|not a readable"


def _truncate(c):
    p = _frame(c, "patient002", "ES")
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:5000]))
    return p, "corrupt or truncated|not a readable"


def _shape_mismatch(c):
    p = _frame(c, "patient003", gt=True)
    _rewrite(p, lambda a: a[:-4])
    return p, "does not match image shape"


def _bad_labels(c):
    p = _frame(c, "patient003", gt=True)
    _rewrite(p, lambda a: np.where(a == 2, 7, a).astype(np.uint8))
    return p, r"unknown label values \[7\]"


def _nan(c):
    p = _frame(c, "patient004")
    _rewrite(p, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a.astype(np.float32)))
    return p, "NaN or Inf"


def _missing_info(c):
    (c / "patient001" / "Info.cfg").unlink()
    return c / "patient001" / "Info.cfg", "missing Info.cfg"


def _missing_es(c):
    p = _frame(c, "patient005", "ES")
    p.unlink()
    return p, "missing ES frame image"


def _four_d(c):
    p = _frame(c, "patient001")
    _rewrite(p, lambda a: np.stack([a, a], axis=-1))
    return p, "4D image of shape"


def _empty_mask(c):
    p = _frame(c, "patient002", "ES", gt=True)
    _rewrite(p, np.zeros_like)
    return p, "empty mask"


def _no_patients(c):
    for folder in [p for p in c.iterdir() if p.is_dir()]:
        shutil.rmtree(folder)
    return c, "no patient folders"


@pytest.mark.parametrize(
    "damage",
    [_corrupt_gzip, _truncate, _shape_mismatch, _bad_labels, _nan, _missing_info, _missing_es, _four_d, _empty_mask,
     _no_patients],
)
def test_cli_bad_input_is_one_clear_error_and_no_output(phantom_cohort, tmp_path, capsys, damage):
    culprit, problem = damage(phantom_cohort)
    out = tmp_path / "out"
    code = main(["--input", str(phantom_cohort), "--out", str(out), "--size", "32"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(culprit) in err
    assert __import__("re").search(problem, err), err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"], "no temporary folder left behind"


def test_cli_refuses_to_overwrite(phantom_cohort_master, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--input", str(phantom_cohort_master), "--out", str(out), "--size", "32"]) == 0
    assert main(["--input", str(phantom_cohort_master), "--out", str(out), "--size", "32"]) == 2
    assert "output folder exists" in capsys.readouterr().err
    assert main(["--input", str(phantom_cohort_master), "--out", str(out), "--size", "24", "--overwrite"]) == 0
    e = json.loads((out / "datalist.json").read_text())["training"][0]
    assert nib.load(out / e["image"]).shape == (24, 24)
