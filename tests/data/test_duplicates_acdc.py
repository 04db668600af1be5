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
"""The duplicate check on real ACDC (skipped when ../shared/data/acdc is absent)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.duplicates import find_duplicates
from cmrsynth.data.splits import split_patients

pytestmark = pytest.mark.real_data

#: The benchmark split (seed 0) of the 70 patients, as every committed benchmark used it.
SEED0 = {
    "val": ["patient010", "patient013", "patient028", "patient030", "patient041", "patient042", "patient066",
            "patient071", "patient082", "patient084"],
    "test": ["patient002", "patient009", "patient021", "patient024", "patient051", "patient052", "patient061",
             "patient073", "patient083", "patient093"],
}


@pytest.fixture(scope="module")
def records(acdc_root):
    return read_acdc(acdc_root)


def test_no_duplicates_among_the_70_and_the_benchmark_split_holds(records):
    report = find_duplicates(records)
    assert report.groups == [] and report.patients == 70
    split = split_patients({r.patient_id: r.group for r in records}, seed=0, together=report.groups)
    assert {s: sorted(p for p, v in split.items() if v == s) for s in ("val", "test")} == SEED0


def test_a_real_patient_filed_twice_is_found_and_kept_with_its_original(records):
    """patient002 (test in the seed-0 split) filed again as patient999: one group, one split."""
    twice = [*records, replace(next(r for r in records if r.patient_id == "patient002"), patient_id="patient999")]
    report = find_duplicates(twice)
    assert report.groups == [["patient002", "patient999"]] and report.pairs[0]["distance"] == 0.0
    split = split_patients({r.patient_id: r.group for r in twice}, seed=0, together=report.groups)
    assert split["patient002"] == split["patient999"]
