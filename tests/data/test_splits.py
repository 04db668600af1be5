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

from collections import Counter

import pytest

from cmrsynth.data.splits import split_patients


def _cohort(per_group: int, groups: str = "ABCDE") -> dict[str, str]:
    return {f"{g}{i:02d}": g for g in groups for i in range(per_group)}


def test_acdc_sized_cohort_splits_10_2_2_per_group():
    cohort = _cohort(14)
    split = split_patients(cohort, seed=0)
    per = Counter((cohort[p], s) for p, s in split.items())
    assert all(per[(g, "train")] == 10 and per[(g, "val")] == 2 and per[(g, "test")] == 2 for g in "ABCDE")


def test_small_groups_do_not_leave_a_split_empty():
    split = split_patients(_cohort(4), seed=0)
    assert Counter(split.values()) == {"train": 14, "val": 3, "test": 3}


def test_seed_fixes_the_split_and_changes_it():
    cohort = _cohort(14)
    assert split_patients(cohort, seed=1) == split_patients(dict(reversed(list(cohort.items()))), seed=1)
    assert split_patients(cohort, seed=1) != split_patients(cohort, seed=2)


def test_every_patient_gets_one_split():
    cohort = _cohort(7, "AB") | {"x": None}
    split = split_patients(cohort, (0.6, 0.2, 0.2), seed=3)
    assert set(split) == set(cohort) and set(split.values()) <= {"train", "val", "test"}


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, -0.1), (0.5, 0.2, 0.2)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_patients(_cohort(2), fractions)
