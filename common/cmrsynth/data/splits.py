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
"""Patient-level train / val / test splits, stratified by pathology group and fixed by a seed.

The same split gives the privacy roles: members are the generators' training patients, non-members are the
held-out patients of the same cohort (val + test). Patient ids that are one person (``cmrsynth.data.duplicates``)
are split as one unit, so a person never sits on both sides.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")
#: Split name to the MONAI datalist section it is written under.
SECTION_OF_SPLIT = {"train": "training", "val": "validation", "test": "test"}
#: Privacy role of each split.
ROLE_OF_SPLIT = {"train": "member", "val": "non_member", "test": "non_member"}


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``fractions`` with the largest-remainder rule (counts sum to n)."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (raw[i] - counts[i], fractions[i]), reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_patients(
    patient_groups: dict[str, str | None],
    fractions: Sequence[float] = (5 / 7, 1 / 7, 1 / 7),
    seed: int = 0,
    together: Sequence[Sequence[str]] = (),
) -> dict[str, str]:
    """Assign each patient to train, val or test, stratified by group, keeping each set in ``together`` in one split.

    Within each group the patients are sorted, shuffled with ``seed`` and cut by ``fractions``; leftovers of
    the rounding go where the whole cohort is furthest below its target. 14 patients per group give 10 / 2 / 2
    with the default fractions; 4 per group over 5 groups give 14 / 3 / 3 in all.

    A set in ``together`` (e.g. patient ids found to be one person) enters the split as one unit, under its first
    id in sorted order and that id's group, and every id of the set goes where that unit goes; the counts are
    then counts of units. Without such sets the split is exactly the one of plain patient ids.

    Args:
        patient_groups: patient id to pathology group (None groups form one stratum).
        fractions: train, val, test fractions; must be non-negative and sum to 1.
        seed: the split's random seed.
        together: sets of patient ids that must share a split; ids not in ``patient_groups`` are ignored.

    Returns:
        patient id to split name.

    Raises:
        ValueError: fractions of the wrong length, negative, or not summing to 1; a patient in two sets.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    unit_of = _units(patient_groups, together)
    units = {pid: group for pid, group in patient_groups.items() if unit_of[pid] == pid}
    assignment = _split_units(units, fractions, seed)
    return {pid: assignment[unit_of[pid]] for pid in patient_groups}


def _units(patient_groups: dict[str, str | None], together: Sequence[Sequence[str]]) -> dict[str, str]:
    """Patient id to the id its unit is split under: the first id (sorted) of its set in ``together``, else itself."""
    unit_of = {pid: pid for pid in patient_groups}
    seen: set[str] = set()
    for ids in together:
        present = sorted(p for p in set(ids) if p in patient_groups)
        if seen & set(present):
            raise ValueError(f"patient(s) {sorted(seen & set(present))} appear in more than one set to keep together")
        seen |= set(present)
        for pid in present:
            unit_of[pid] = present[0]
    return unit_of


def _split_units(units: dict[str, str | None], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """The stratified, seeded split of ``units`` (id to group); see ``split_patients``."""
    strata: dict[str, list[str]] = defaultdict(list)
    for pid, group in units.items():
        strata[str(group)].append(pid)
    rng = np.random.default_rng(seed)
    shuffled = {}
    for group in sorted(strata):
        patients = sorted(strata[group])
        rng.shuffle(patients)
        shuffled[group] = patients
    # every group gets the floor of its share; the patients left over go, one by one, to the split furthest
    # below its cohort-wide target, so small groups do not all round the same way (and leave a split empty)
    target = _allocate(len(units), fractions)
    counts = {g: [int(np.floor(len(p) * f)) for f in fractions] for g, p in shuffled.items()}
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    for group, patients in shuffled.items():
        for _ in range(len(patients) - sum(counts[group])):
            i = max(range(3), key=lambda j: (target[j] - total[j], fractions[j], -j))
            counts[group][i] += 1
            total[i] += 1
    assignment = {}
    for group, patients in shuffled.items():
        start = 0
        for split, count in zip(SPLITS, counts[group]):
            for pid in patients[start : start + count]:
                assignment[pid] = split
            start += count
    return assignment
