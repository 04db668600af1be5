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

import numpy as np
import pytest

from cmrsynth.data.phantom import GROUPS, phantom_patient, write_phantom_cohort


def _volumes(group, seed=0):
    rng = np.random.default_rng(seed)
    ed_img, ed, spacing, anatomy = phantom_patient(group, "ED", rng)
    es_img, es, _, _ = phantom_patient(group, "ES", rng, anatomy)
    return ed_img, ed, es_img, es, spacing


@pytest.mark.parametrize("group", GROUPS)
def test_anatomy_is_plausible(group):
    img, ed, _, es, spacing = _volumes(group)
    assert img.shape == ed.shape and 0 <= img.min() and img.max() == pytest.approx(1000)
    assert set(np.unique(ed)) == {0, 1, 2, 3}
    mid = ed.shape[2] // 3
    lv = ed[:, :, mid] == 3
    ring = ed[:, :, mid] == 2
    # the LV pool is brighter than the myocardium around it, and the myocardium encloses it
    assert img[:, :, mid][lv].mean() > img[:, :, mid][ring].mean() + 200
    assert not (ed[:, :, -1] > 0).any(), "the last slice lies beyond the apex"
    assert (es == 3).sum() < (ed == 3).sum(), "the LV cavity shrinks at end-systole"


def _lv_ef(group):
    _, ed, _, es, _ = _volumes(group, seed=1)
    return 1 - (es == 3).sum() / (ed == 3).sum()


def test_groups_differ_as_their_pathology_says():
    efs = {g: _lv_ef(g) for g in GROUPS}
    assert efs["DCM"] < 0.35 < efs["NOR"] and efs["HCM"] > efs["NOR"]
    _, nor, _, _, _ = _volumes("NOR", 2)
    _, rv, _, _, _ = _volumes("RV", 2)
    assert (rv == 1).sum() / (rv == 3).sum() > 1.5 * (nor == 1).sum() / (nor == 3).sum()
    _, hcm, _, _, _ = _volumes("HCM", 2)
    assert (hcm == 2).sum() / (hcm == 3).sum() > 2 * (nor == 2).sum() / (nor == 3).sum()


def test_seeded_and_bad_arguments(tmp_path):
    a, b = _volumes("NOR", 5)[0], _volumes("NOR", 5)[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown phantom group 'XYZ'"):
        phantom_patient("XYZ", "ED", np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_per_group"):
        write_phantom_cohort(tmp_path / "c", n_per_group=0)


def test_cohort_layout(phantom_cohort_master):
    folders = sorted(p.name for p in phantom_cohort_master.iterdir() if p.name != ".cmrsynth-output.json")
    assert folders == [f"patient{i:03d}" for i in range(1, 6)]
    assert (phantom_cohort_master / ".cmrsynth-output.json").is_file()  # written by cmr-synth: overwrite may replace it
    files = sorted(p.name for p in (phantom_cohort_master / "patient001").iterdir())
    assert files[0] == "Info.cfg" and "patient001_frame01_gt.nii.gz" in files and len(files) == 5
