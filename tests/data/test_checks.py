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
"""The one validation path: geometry, label values, memory, datalists and output folders."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from cmrsynth.data.atomic import MANIFEST, atomic_directory
from cmrsynth.data.checks import GeometryLimits, bundle_inputs, check_datalist, check_output_path
from cmrsynth.data.nifti import load_frame, load_volume
from cmrsynth.errors import CMRDataError


def _nifti(path, data, zooms=(1.5, 1.5, 8.0), affine=None):
    img = nib.Nifti1Image(np.asarray(data), np.diag([*zooms, *[1.0] * (4 - len(zooms))]) if affine is None else affine)
    nib.save(img, str(path))
    return path


def _volume():
    label = np.zeros((12, 12, 3), np.uint8)
    label[3:9, 3:9] = 2
    label[5:7, 5:7] = 3
    return np.random.default_rng(0).integers(0, 100, (12, 12, 3)).astype(np.int16), label


def test_zero_spacing_without_affine_is_refused_not_read_as_1mm(tmp_path):
    img = nib.Nifti1Image(_volume()[0], None)
    img.header.set_zooms((0.0, 0.0, 0.0))
    img.header["qform_code"] = img.header["sform_code"] = 0
    nib.save(img, str(tmp_path / "v.nii.gz"))
    with pytest.raises(CMRDataError, match=r"v\.nii\.gz: no affine \(qform_code and sform_code are 0\)"):
        load_volume(tmp_path / "v.nii.gz")


@pytest.mark.parametrize("zooms, problem", [
    ((np.nan, 1.5, 8.0), r"voxel spacing \[nan, 1\.5, 8\.0\] mm is not finite and positive"),
    ((100.0, 100.0, 8.0), r"in-plane spacing 100 mm is outside the plausible range 0\.3-5 mm"),
    ((1.5, 1.5, 40.0), r"slice spacing 40 mm is outside the plausible range 2-20 mm"),
    ((1.5, 1.5, 0.5), r"slice spacing 0\.5 mm is outside"),
])
def test_implausible_spacing_is_refused_with_the_value_and_range(tmp_path, zooms, problem):
    affine = np.diag([*zooms, 1.0]) if np.isfinite(zooms).all() else np.diag([1.5, 1.5, 8.0, 1.0])
    img = nib.Nifti1Image(_volume()[0], affine)
    img.header.set_zooms(zooms)
    nib.save(img, str(tmp_path / "v.nii.gz"))
    with pytest.raises(CMRDataError, match=problem):
        load_volume(tmp_path / "v.nii.gz")


def test_spacing_range_is_configurable(tmp_path):
    path = _nifti(tmp_path / "v.nii.gz", _volume()[0], zooms=(0.2, 0.2, 8.0))
    with pytest.raises(CMRDataError, match="in-plane spacing 0.2 mm"):
        load_volume(path)
    assert load_volume(path, limits=GeometryLimits(in_plane_mm=(0.1, 3.0)))[1] == pytest.approx((0.2, 0.2, 8.0))
    assert load_volume(path, limits=GeometryLimits(check=False))[1] == pytest.approx((0.2, 0.2, 8.0))
    with pytest.raises(ValueError, match=r"in_plane_mm must be a finite range 0 < min <= max, got \(3\.0, 1\.0\)"):
        GeometryLimits(in_plane_mm=(3.0, 1.0))


def test_degenerate_affine_is_refused_with_the_reason(tmp_path):
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    affine[:3, 2] = affine[:3, 0]  # the slice axis collapses onto x
    with pytest.raises(CMRDataError, match="degenerate affine: singular"):
        load_volume(_nifti(tmp_path / "v.nii.gz", _volume()[0], affine=affine))


def test_label_whose_affine_disagrees_with_its_image_is_refused(tmp_path):
    image, label = _volume()
    shifted = np.diag([1.5, 1.5, 8.0, 1.0])
    shifted[0, 3] = 4.5  # three pixels off
    i = _nifti(tmp_path / "i.nii.gz", image)
    with pytest.raises(CMRDataError, match=r"l\.nii\.gz: affine differs from its image's \(i\.nii\.gz\) by up to 4\.5 mm"):
        load_frame(i, _nifti(tmp_path / "l.nii.gz", label, affine=shifted))
    shifted[0, 3] = 1e-4  # within the tolerance
    assert load_frame(i, _nifti(tmp_path / "l2.nii.gz", label, affine=shifted))[1].shape == (12, 12, 3)


def test_float_labels_accepted_only_when_integral_and_reported_as_they_are(tmp_path):
    image, label = _volume()
    i = _nifti(tmp_path / "i.nii.gz", image)
    assert np.array_equal(load_frame(i, _nifti(tmp_path / "f.nii.gz", label.astype(np.float64)))[1], label)
    half = label.astype(np.float32)
    half[5, 5, 1] = 2.5
    with pytest.raises(CMRDataError, match=r"h\.nii\.gz: non-integer label values \[2\.5\]"):
        load_frame(i, _nifti(tmp_path / "h.nii.gz", half))


def test_allocation_sized_from_geometry_is_bounded(tmp_path, monkeypatch):
    """A header claiming a huge volume is refused before its data is read; so is a resampling it would blow up."""
    from cmrsynth.transforms import ResampleInPlaned

    path = _nifti(tmp_path / "v.nii.gz", _volume()[0])
    monkeypatch.setenv("CMRSYNTH_MAX_ALLOC_GB", "0.000001")  # ~1 kB
    with pytest.raises(CMRDataError, match=r"v\.nii\.gz: the volume of shape \(12, 12, 3\) would need .* over the .* limit"):
        load_volume(path)
    monkeypatch.setenv("CMRSYNTH_MAX_ALLOC_GB", "0.01")
    d = {"image": np.zeros((200, 200, 10), np.float32), "spacing": (100.0, 100.0, 8.0), "source_image": "big.nii.gz"}
    with pytest.raises(CMRDataError, match=r"big\.nii\.gz: resampling to 2\.5 mm of shape \(10, 1, 8000, 8000\)"):
        ResampleInPlaned(keys="image", spacing=2.5)(d)
    monkeypatch.setenv("CMRSYNTH_MAX_ALLOC_GB", "lots")
    with pytest.raises(ValueError, match="CMRSYNTH_MAX_ALLOC_GB must be a number of GiB, got 'lots'"):
        load_volume(path)


@pytest.mark.parametrize("relation", ["equal", "inside", "contains", "symlink"])
def test_output_overlapping_an_input_is_refused(tmp_path, relation):
    cohort = tmp_path / "cohort"
    (cohort / "p1").mkdir(parents=True)
    out = {"equal": cohort, "inside": cohort / "prepared", "contains": tmp_path, "symlink": tmp_path / "link"}[relation]
    if relation == "symlink":
        out.symlink_to(cohort)
    how = {"equal": "is", "inside": "is inside", "contains": "contains", "symlink": "is"}[relation]
    with pytest.raises(CMRDataError, match=f"output {how} the input"):
        check_output_path(out, [cohort])
    with pytest.raises(CMRDataError, match="inputs are never written"):
        with atomic_directory(out, overwrite=True, inputs=[cohort]):
            pass
    assert (cohort / "p1").is_dir()


def test_overwrite_replaces_only_a_folder_cmrsynth_wrote(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(CMRDataError, match=f"mine: exists and was not written by cmr-synth \\(no {MANIFEST}\\)"):
        with atomic_directory(mine, overwrite=True):
            pass
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "out"
    for n in range(2):  # written by cmr-synth, so replaced
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "n.txt").write_text(str(n))
    assert (out / "n.txt").read_text() == "1" and json.loads((out / MANIFEST).read_text())["written_by"] == "cmr-synth"


def test_read_only_output_parent_is_one_clear_error(tmp_path, monkeypatch):
    """As root (CI) chmod does not stop writes, so the file system's refusal is simulated where the folder is made."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(CMRDataError, match=r"ro: cannot create the output here \(Permission denied\)"):
        with atomic_directory(tmp_path / "ro" / "out"):
            pass


def _datalist(tmp_path, entries, shape=(8, 8)):
    for e in entries:
        for key in ("image", "label"):
            if isinstance(e, dict) and isinstance(e.get(key), str) and not (tmp_path / e[key]).exists():
                _nifti(tmp_path / e[key], np.zeros(shape, np.float32), zooms=(2.5, 2.5))
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": entries, "validation": entries}))
    return path


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_text("[1, 2]"), "top level is a list"),
    (lambda p: p.write_text("{"), "invalid JSON"),
    (lambda p: p.write_text(json.dumps({"training": [{"image": None, "label": "l.nii.gz"}]})), r"training\[0\] has image = None"),
    (lambda p: p.write_text(json.dumps({"training": []})), "section 'training' is empty"),
    (lambda p: p.write_text(json.dumps({"validation": []})), "section 'training' is missing"),
    (lambda p: p.write_text(json.dumps({"training": ["a.nii.gz"]})), r"training\[0\] is a str"),
    (lambda p: (p.parent / "a.nii.gz").unlink(), r"a\.nii\.gz: image listed in .* not found"),
    (lambda p: _nifti(p.parent / "b.nii.gz", np.zeros((9, 8), np.float32), zooms=(2.5, 2.5)), r"b\.nii\.gz: label has shape \(9, 8\); expected \(8, 8\)"),
    (lambda p: (p.parent / "a.nii.gz").write_bytes(gzip.compress(gzip.decompress((p.parent / "a.nii.gz").read_bytes())[:300])),
     r"a\.nii\.gz: (corrupt or truncated|not a readable)"),
])
def test_datalist_check_names_the_file_and_problem(tmp_path, damage, problem):
    path = _datalist(tmp_path, [{"image": "a.nii.gz", "label": "b.nii.gz"}])
    assert check_datalist(path, ["training", "validation"])["training"]
    damage(path)
    with pytest.raises(CMRDataError, match=problem):
        check_datalist(path, ["training"])


def test_bundle_inputs_print_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    path = _datalist(tmp_path / "data", [{"image": "a.nii.gz", "label": "b.nii.gz"}])
    assert bundle_inputs([{"datalist": str(path), "sections": ["training"]}], outputs=[str(tmp_path / "run" / "models")])
    assert bundle_inputs([{"datalist": None, "key": "training", "optional": True}])
    for kwargs, problem in [({"image_size": 16}, r"has shape \(8, 8\); expected \(16, 16\)"),
                            ({"outputs": [str(tmp_path / "data")]}, "output is the input"),
                            ({"outputs": [str(tmp_path / "data" / "models")]}, "output is inside the input"),
                            ({"files": [{"path": str(tmp_path / "nope.pt"), "problem": "train first"}]}, "nope.pt: train first")]:
        with pytest.raises(SystemExit) as exit_:
            bundle_inputs([{"datalist": str(path), "key": "training"}], **kwargs)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
        assert __import__("re").search(problem, err), err
