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

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.duplicates import (
    DUPLICATE_THRESHOLD,
    find_duplicates,
    group_pairs,
    normalised_stack,
    pair_distance,
    patient_stacks,
    signature,
    stack_distance,
)
from cmrsynth.data.phantom import write_phantom_cohort
from cmrsynth.errors import CMRDataError


def copy_patient(cohort: Path, source: str, new_id: str, scale: float = 1.0, noise_sd: float = 0.0, seed: int = 0) -> None:
    """Copy a phantom patient under a new id; images times ``scale`` plus Gaussian noise of ``noise_sd`` x the range."""
    rng = np.random.default_rng(seed)
    folder = cohort / new_id
    folder.mkdir()
    shutil.copy(cohort / source / "Info.cfg", folder / "Info.cfg")
    for f in (cohort / source).glob("*.nii.gz"):
        target = folder / f.name.replace(source, new_id)
        img = nib.load(str(f))
        data = np.asanyarray(img.dataobj)
        if not f.name.endswith("_gt.nii.gz"):
            data = data * scale + rng.normal(0, noise_sd * float(data.max() - data.min()), data.shape)
            data = np.clip(data, -32768, 32767).round().astype(np.int16)
        nib.save(nib.Nifti1Image(data, img.affine), str(target))


@pytest.fixture(scope="module")
def cohort_with_copies(phantom_cohort_master, tmp_path_factory) -> Path:
    """The 5-patient phantom cohort plus patient002 as patient101 (a plain copy) and patient004 as patient102
    (intensity x 1.6 plus noise of 2 % of the range)."""
    root = Path(shutil.copytree(phantom_cohort_master, tmp_path_factory.mktemp("dups") / "cohort"))
    copy_patient(root, "patient002", "patient101")
    copy_patient(root, "patient004", "patient102", scale=1.6, noise_sd=0.02)
    return root


@pytest.fixture(scope="module")
def distinct_cohort(tmp_path_factory) -> Path:
    """Ten distinct phantom patients (two per group)."""
    root = tmp_path_factory.mktemp("distinct") / "cohort"
    write_phantom_cohort(root, n_per_group=2, seed=7)
    return root


def test_copies_are_found_and_grouped(cohort_with_copies):
    report = find_duplicates(read_acdc(cohort_with_copies))
    assert report.groups == [["patient002", "patient101"], ["patient004", "patient102"]]
    by_pair = {tuple(p["patients"]): p["distance"] for p in report.pairs}
    assert by_pair[("patient002", "patient101")] == pytest.approx(0.0, abs=1e-3)  # int16 rounding only
    assert 0.01 < by_pair[("patient004", "patient102")] < DUPLICATE_THRESHOLD / 3
    assert report.patients == 7 and report.candidates >= 2


def test_distinct_phantoms_are_never_flagged(distinct_cohort):
    records = read_acdc(distinct_cohort)
    report = find_duplicates(records)
    assert report.groups == [] and report.pairs == []
    stacks = [patient_stacks(r) for r in records]
    closest = min(pair_distance(a, b) for i, a in enumerate(stacks) for b in stacks[i + 1:])
    assert closest > 1.2 * DUPLICATE_THRESHOLD


def test_normalised_stack_ignores_intensity_scale_and_offset():
    rng = np.random.default_rng(0)
    v = rng.uniform(0, 1000, (40, 50, 6)).astype(np.float32)
    a, b = normalised_stack(v, 16), normalised_stack(3.5 * v + 200, 16)
    assert a.shape == (6, 16, 16)
    assert a.mean() == pytest.approx(0, abs=1e-5) and a.std() == pytest.approx(1, abs=1e-4)
    assert stack_distance(a, b) < 1e-4
    assert signature(a).shape == (8 * 16 * 16,)
    assert np.all(normalised_stack(np.full((8, 8, 2), 5.0), 4) == 0)


def test_stack_distance_aligns_slice_offsets_and_measures_unrelated_images():
    rng = np.random.default_rng(1)
    a = normalised_stack(rng.normal(size=(32, 32, 8)), 32)
    assert stack_distance(a[2:7], a) == pytest.approx(0.0, abs=1e-6)  # a re-export missing slices
    b = normalised_stack(rng.normal(size=(32, 32, 8)), 32)
    assert stack_distance(a, b) == pytest.approx(np.sqrt(2), rel=0.05)  # sqrt(2 (1 - r)) with r ~ 0
    with pytest.raises(ValueError, match="different grids"):
        stack_distance(a, b[:, :16])


def test_pair_distance_is_the_worse_phase_and_inf_without_a_common_phase():
    rng = np.random.default_rng(2)
    same = normalised_stack(rng.normal(size=(16, 16, 4)), 16)
    other = normalised_stack(rng.normal(size=(16, 16, 4)), 16)
    assert pair_distance({"ED": same, "ES": same}, {"ED": same, "ES": other}) == pytest.approx(stack_distance(same, other))
    assert pair_distance({"ED": same}, {"ES": same}) == float("inf")


def test_group_pairs_joins_chains():
    assert group_pairs([("b", "c"), ("d", "e"), ("a", "b")]) == [["a", "b", "c"], ["d", "e"]]
    assert group_pairs([]) == []


def test_bad_image_and_bad_threshold_are_clear_errors(phantom_cohort):
    with pytest.raises(ValueError, match="threshold must be positive, got 0"):
        find_duplicates(read_acdc(phantom_cohort), threshold=0)
    bad = next((phantom_cohort / "patient003").glob("*_frame01.nii.gz"))
    bad.write_bytes(b"\x1f\x8b\x08\x00 not deflate")
    with pytest.raises(CMRDataError, match="patient003_frame01.nii.gz: corrupt or truncated"):
        find_duplicates(read_acdc(phantom_cohort))
