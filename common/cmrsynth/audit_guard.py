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
"""The privacy audit's guard on its non-member set: no held-out patient may be a copy of a training patient.

A person filed under two ids, one in training and one held out, is a member that the attacks would score as a
non-member (the attacks then look weaker than they are). Before any attack, every non-member slice gets its nearest
member slice in pixel space (RMS per pixel, the release gate's distance), and the threshold is the release gate's
kind: a low quantile of real nearest distances. The gate calibrates on held-out→train distances; here the held-out
set is what is under suspicion, so the quantile is taken over each member slice's nearest slice of *another* member
subject (the datalist's ``subject``, else ``patient``), and then multiplied by ``margin`` (0.5): the gate may drop a
few honest samples, while this check must never drop a real stranger from a small non-member set, and a quantile
over few member subjects is no better than their minimum (on five phantom patients, a stranger's slices came within
0.30 of a member's while the 1 % quantile over two member subjects was 0.36; copies, rescaled and re-noised, stayed
below 0.02). A patient is a near-copy when at least ``min_share`` of its slices fall below the threshold: a copy
repeats every slice, while a real stranger lands that close on a slice rarely.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from cmrsynth.metrics import privacy


def _subject(e: dict) -> str:
    return str(e.get("subject", e["patient"]))


def member_threshold(members: Sequence[dict], quantile: float = 0.01, margin: float = 0.5) -> float:
    """The near-copy distance: ``margin`` times the ``quantile`` quantile of member slices' distances to the nearest
    slice of another member subject (``privacy.copy_threshold``)."""
    images = np.stack([e["array"] for e in members])
    labels = [_subject(e) for e in members]
    d, _ = privacy.nearest_other(images, images, labels, labels)
    finite = d[np.isfinite(d)]
    if finite.size == 0:
        raise ValueError(f"need members of at least 2 subjects to calibrate the near-copy distance, got {len(set(labels))}")
    return margin * privacy.copy_threshold(finite, quantile)


def check_non_members(slices: Sequence[dict], members: Sequence[dict], quantile: float = 0.01, margin: float = 0.5,
                      min_share: float = 0.5) -> dict:
    """Find non-member patients that are near-copies of members.

    Args:
        slices: audited slices with ``array``, ``patient`` and ``role`` (``audit_slices``); non-members are checked.
        members: the member slices to compare with (e.g. the whole ``training`` section), with ``array``, ``patient``
            and optionally ``subject``.
        quantile: quantile of member-to-other-member nearest distances that sets the near-copy distance.
        margin: factor on that quantile (below 1: stricter than the release gate).
        min_share: share of a patient's slices that must be near-copies to flag the patient.

    Returns:
        ``{"threshold", "quantile", "margin", "min_share", "checked", "flagged": [{"patient", "nearest_member",
        "near_copy_slices", "slices", "median_distance"}]}``, flagged sorted by patient.
    """
    threshold = member_threshold(members, quantile, margin)
    non = [e for e in slices if e["role"] == "non_member"]
    flagged = []
    if non:
        d, idx = privacy.nearest_other(np.stack([e["array"] for e in non]), np.stack([e["array"] for e in members]))
        by_patient: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for e, dist, i in zip(non, d, idx):
            by_patient[e["patient"]].append((float(dist), int(i)))
        for pid, hits in sorted(by_patient.items()):
            near = [(dist, i) for dist, i in hits if dist < threshold]
            if len(near) >= min_share * len(hits):
                nearest = [members[i]["patient"] for _, i in near]
                flagged.append({"patient": pid, "nearest_member": max(set(nearest), key=nearest.count),
                                "near_copy_slices": len(near), "slices": len(hits),
                                "median_distance": round(float(np.median([dist for dist, _ in hits])), 5)})
    return {"threshold": threshold, "quantile": quantile, "margin": margin, "min_share": min_share,
            "checked": len({e["patient"] for e in non}), "flagged": flagged}


def check_line(check: dict) -> str:
    """The report's first line about its non-member set."""
    if not check["flagged"]:
        return "Non-member set checked: no near-copies of members."
    listed = "; ".join(f"{f['patient']} (a copy of member {f['nearest_member']}: {f['near_copy_slices']} of {f['slices']} "
                       f"slices closer than {check['threshold']:.4f})" for f in check["flagged"])
    return (f"**Non-member set: {len(check['flagged'])} held-out patient(s) are near-copies of members and are left out of "
            f"every attack statistic: {listed}.** One person is probably filed under two ids; prepare the data again "
            "(`scripts/prepare_data.py` keeps duplicate subjects in one split).")
