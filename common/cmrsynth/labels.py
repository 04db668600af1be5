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
"""The one label schema of cmr-synth (ACDC convention) and converters from other datasets.

Inside the product every mask uses: 0 background, 1 RV cavity, 2 myocardium, 3 LV cavity.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

#: Canonical label names, by value (ACDC convention).
LABELS: dict[int, str] = {0: "background", 1: "rv", 2: "myo", 3: "lv"}
#: Structure names to values, for the foreground only.
STRUCTURES: dict[str, int] = {"rv": 1, "myo": 2, "lv": 3}
NUM_CLASSES = len(LABELS)
#: named thirds of a short-axis stack, base to apex (the datalist's ``slice_position`` runs 0 at the base to 1)
SLICE_LEVELS = ("basal", "mid", "apical")


def slice_level(slice_position: float | None, levels=SLICE_LEVELS) -> str | None:
    """The named equal part of the stack (``levels``, base to apex) a slice at ``slice_position`` lies in; None
    when the position or the levels are unknown."""
    if slice_position is None or not levels:
        return None
    return levels[min(int(float(slice_position) * len(levels)), len(levels) - 1)]


#: `channel_def` as written into every bundle's metadata.json.
CHANNEL_DEF: dict[str, str] = {"0": "background", "1": "RV cavity", "2": "myocardium", "3": "LV cavity"}


class LabelConvention(str, Enum):
    """Label conventions of the supported datasets (a plain string works in configs)."""

    ACDC = "acdc"  # 1 RV, 2 MYO, 3 LV: the canonical one
    MNMS = "mnms"  # M&Ms 2020 and M&Ms-2: 1 LV, 2 MYO, 3 RV


#: Lookup tables from each convention to the canonical one (index = source value).
_TO_CANONICAL: dict[LabelConvention, np.ndarray] = {
    LabelConvention.ACDC: np.array([0, 1, 2, 3], dtype=np.uint8),
    LabelConvention.MNMS: np.array([0, 3, 2, 1], dtype=np.uint8),
}


def unknown_label_values(label: np.ndarray) -> list[int]:
    """Return the sorted values in ``label`` that are not in 0..3, as they are (2.5 stays 2.5; integral ones as int)."""
    values = np.unique(label)
    bad = [float(v) for v in values if not (float(v).is_integer() and 0 <= v < NUM_CLASSES)]
    return sorted(int(v) if v.is_integer() else v for v in bad)


def to_canonical(label: np.ndarray, convention: str | LabelConvention) -> np.ndarray:
    """Convert a mask from a dataset's convention to the canonical ACDC one.

    Args:
        label: integer mask of any shape with values in 0..3.
        convention: the source convention, ``"acdc"`` or ``"mnms"``.

    Returns:
        uint8 mask of the same shape in the canonical convention.

    Raises:
        ValueError: unknown convention, or values outside 0..3.
    """
    try:
        convention = LabelConvention(convention)
    except ValueError:
        allowed = [c.value for c in LabelConvention]
        raise ValueError(f"unknown label convention {convention!r}; allowed: {allowed}") from None
    bad = unknown_label_values(label)
    if bad:
        raise ValueError(f"label values {bad} are outside 0..3")
    return _TO_CANONICAL[convention][np.asarray(label).astype(np.int64)]


def myocardium_enclosure(label: np.ndarray, value: int) -> float | None:
    """Share of the one-pixel ring around structure ``value`` that is myocardium, over the mid slices of a mask.

    In the canonical convention the LV cavity (3) is enclosed by myocardium (about 0.9 on ACDC) while the RV cavity
    (1) only touches the septum (about 0.3), which is what tells a swapped convention apart.

    Args:
        label: canonical (X, Y, S) mask.
        value: the structure whose ring is measured.

    Returns:
        the share in [0, 1], or None when no slice holds all three structures.
    """
    from scipy.ndimage import binary_dilation

    has_all = [s for s in range(label.shape[2]) if all((label[..., s] == v).any() for v in STRUCTURES.values())]
    if not has_all:
        return None
    third = max(1, len(has_all) // 3)
    mid = has_all[(len(has_all) - third) // 2 :][:third]
    ring_myo = ring = 0
    for s in mid:
        region = label[..., s] == value
        edge = binary_dilation(region) & ~region
        ring += int(edge.sum())
        ring_myo += int((edge & (label[..., s] == STRUCTURES["myo"])).sum())
    return ring_myo / ring if ring else None


def looks_swapped(label: np.ndarray) -> bool | None:
    """True when a canonical mask's RV value looks like an LV (more enclosed by myocardium than the LV value) or the
    RV does not touch the myocardium; None when it cannot tell (a structure missing from every slice)."""
    lv, rv = myocardium_enclosure(label, STRUCTURES["lv"]), myocardium_enclosure(label, STRUCTURES["rv"])
    if lv is None or rv is None:
        return None
    return rv >= lv


def one_hot(label: np.ndarray) -> np.ndarray:
    """One-hot encode a canonical mask: (...) -> (4, ...) float32."""
    return (np.arange(NUM_CLASSES).reshape((-1,) + (1,) * label.ndim) == label[None]).astype(np.float32)
