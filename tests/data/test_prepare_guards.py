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
"""prepare_data.py never writes its input, checks label conventions, and accounts for every patient."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.prepare import main


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_over_the_input_is_refused_even_with_overwrite(phantom_cohort, capsys, where):
    before = _tree(phantom_cohort)
    out = {"same": phantom_cohort, "inside": phantom_cohort / "prepared", "parent": phantom_cohort.parent}[where]
    code = main(["--input", str(phantom_cohort), "--out", str(out), "--size", "32", "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "inputs are never written" in err, err
    assert _tree(phantom_cohort) == before, "the input cohort is untouched"


def test_overwrite_refuses_a_folder_cmrsynth_did_not_write(phantom_cohort_master, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code = main(["--input", str(phantom_cohort_master), "--out", str(out), "--size", "32", "--overwrite"])
    assert code == 2 and "was not written by cmr-synth" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work"


def test_every_patient_is_accounted_for(phantom_cohort, tmp_path, capsys):
    """A symlink loop, a dangling link and an unlabelled patient are each listed with the reason, not dropped."""
    (phantom_cohort / "patient900").symlink_to(phantom_cohort / "patient900")  # a loop
    (phantom_cohort / "patient901").symlink_to(tmp_path / "gone")
    for gt in (phantom_cohort / "patient005").glob("*_gt.nii.gz"):
        gt.unlink()
    out = tmp_path / "out"
    assert main(["--input", str(phantom_cohort), "--out", str(out), "--size", "32"]) == 0
    printed = capsys.readouterr().out
    skipped = json.loads((out / "summary.json").read_text())["skipped"]
    assert skipped == {"patient900": "symlink loop", "patient901": "broken symlink",
                       "patient005": "unlabelled (pass include_unlabelled to use it for generation)"}
    assert "skipped patients: 3" in printed and "patient900: symlink loop" in printed
    assert json.loads((out / "datalist.json").read_text())["skipped"] == skipped


def _as_mnms2(cohort, out, swap: bool):
    """Write a phantom cohort in the M&Ms-2 layout, its labels left in the ACDC convention or swapped to M&Ms'."""
    out.mkdir()
    for r in read_acdc(cohort):
        for phase, frame in r.frames.items():
            shutil.copy(frame.image, out / f"{r.patient_id}_SA_{phase}.nii.gz")
            img = nib.load(frame.label)
            label = np.asarray(img.dataobj)
            label = np.choose(label, [0, 3, 2, 1]).astype(np.uint8) if swap else label
            nib.save(nib.Nifti1Image(label, img.affine), str(out / f"{r.patient_id}_SA_{phase}_gt.nii.gz"))
    return out


def test_labels_already_in_the_other_convention_are_refused_with_the_cause(phantom_cohort_master, tmp_path, capsys):
    acdc_labels = _as_mnms2(phantom_cohort_master, tmp_path / "mnms2_acdc_labels", swap=False)
    out = tmp_path / "out"
    code = main(["--reader", "mnms2", "--input", str(acdc_labels), "--out", str(out), "--size", "32", "--fractions", "0.6", "0.2", "0.2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert "5 of 5 patients" in err and "likely already in the acdc convention; pass --labels acdc" in err, err
    assert main(["--reader", "mnms2", "--input", str(acdc_labels), "--out", str(out), "--size", "32", "--labels", "acdc",
                 "--fractions", "0.6", "0.2", "0.2"]) == 0
    # the same files in the true M&Ms convention are read and converted without a word
    right = _as_mnms2(phantom_cohort_master, tmp_path / "mnms2", swap=True)
    assert main(["--reader", "mnms2", "--input", str(right), "--out", str(tmp_path / "out2"), "--size", "32",
                 "--fractions", "0.6", "0.2", "0.2"]) == 0
    a, b = (json.loads((p / "datalist.json").read_text())["training"][0]["label"] for p in (out, tmp_path / "out2"))
    assert np.array_equal(nib.load(out / a).get_fdata(), nib.load(tmp_path / "out2" / b).get_fdata())


def test_implausible_spacing_is_refused_then_accepted_when_the_user_says_so(phantom_cohort, tmp_path, capsys, monkeypatch):
    """100 mm in-plane (a wrong header) is refused by default; accepted with --any-spacing, when the allocation limit
    then stops the resampling it would need, with a clear message rather than a 12 GB allocation."""
    for path in (phantom_cohort / "patient001").glob("*_frame??*.nii.gz"):  # image and label alike
        nib.save(nib.Nifti1Image(np.asarray(nib.load(path).dataobj), np.diag([100.0, 100.0, 8.0, 1.0])), str(path))
    args = ["--input", str(phantom_cohort), "--out", str(tmp_path / "out"), "--size", "32", "--duplicates", "off"]
    assert main(args) == 2
    assert "in-plane spacing 100 mm is outside the plausible range 0.3-5 mm" in capsys.readouterr().err
    monkeypatch.setenv("CMRSYNTH_MAX_ALLOC_GB", "0.25")  # keep the test light; the default is 2 GiB
    assert main([*args, "--in-plane-mm", "0.3", "200"]) == 2
    assert "would need" in capsys.readouterr().err  # no 12 GB allocation: the limit names the shape instead
    assert not (tmp_path / "out").exists()
