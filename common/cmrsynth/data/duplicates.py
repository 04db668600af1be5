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
"""Duplicate subjects: one person filed under two patient ids (a re-export, a merged archive, a copied folder).

Every ED / ES volume is brought to a common grid (``size`` x ``size`` in-plane, anti-aliased so that pixel noise
averages out; its own slices) and z-scored over the volume, which makes it blind to an intensity scale and offset. Then, in two steps:

1. **Signature**: the z-scored stack shrunk to 8 slices of 16 x 16 (a downsampled image hash); the RMS
   distance between two patients' signatures (the larger over their common phases) gives the candidate pairs.
2. **Exact check** on the candidates: the RMS distance between the aligned z-scored slices of the two stacks
   (the best slice offset when the counts differ), the larger over their common phases. It is
   ``sqrt(2 (1 - r))`` for a correlation r of the stacks: 0 for a copy, about 1.4 for unrelated images.

A pair below ``threshold`` is one person. The default threshold is measured on ACDC (``scripts/
measure_duplicates.py``; README, data section): far below the closest pair of different patients and far above
copies with noise and a changed intensity scale. Pairs join into groups (a person filed three times is one
group of three).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from cmrsynth.data.checks import GeometryLimits
from cmrsynth.data.nifti import load_volume
from cmrsynth.data.records import PatientRecord

#: Pairs whose exact distance is below this are one person (measured on ACDC, see the module docstring).
DUPLICATE_THRESHOLD = 0.3
#: Candidate pairs: signature distance below this multiple of the threshold (signatures are smoothed, so a
#: copy's signature distance is at most about its exact distance).
CANDIDATE_FACTOR = 2.0
#: In-plane size of the common grid of the exact check.
GRID = 64
#: Shape (slices, rows, columns) of a signature per phase.
SIGNATURE_SHAPE = (8, 16, 16)

#: the spacing range is the preparation's to check, with the user's limits (the signature needs only the arrays)
_ANY_SPACING = GeometryLimits(check=False)


def normalised_stack(volume: np.ndarray, size: int = GRID) -> np.ndarray:
    """A volume (X, Y, S) resampled in-plane to (S, size, size) and z-scored over the whole stack.

    Args:
        volume: the image volume, any intensity scale.
        size: in-plane side of the common grid.

    Returns:
        (S, size, size) float32 with mean 0 and sd 1 (all zeros for a constant volume).
    """
    v = np.asarray(volume, np.float32)
    # anti-aliased, as skimage's resize: a Gaussian of sd (factor - 1) / 2 first, so pixel noise averages out
    sigma = [max((n / size - 1) / 2, 0.0) for n in v.shape[:2]] + [0.0]
    v = gaussian_filter(v, sigma) if any(sigma) else v
    stack = zoom(v, (size / v.shape[0], size / v.shape[1], 1.0), order=1, prefilter=False).transpose(2, 0, 1)
    return _zscore(stack)


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = float(x.std())
    return ((x - x.mean()) / sd if sd > 0 else np.zeros_like(x)).astype(np.float32)


def signature(stack: np.ndarray) -> np.ndarray:
    """The downsampled hash of a normalised stack: (8, 16, 16) z-scored, flattened to 2,048 values."""
    factors = [n / s for n, s in zip(SIGNATURE_SHAPE, stack.shape)]
    return _zscore(zoom(stack, factors, order=1, prefilter=False)).ravel()


def stack_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance between the aligned slices of two normalised stacks (S, H, W), the best slice offset when the
    slice counts differ (slices of the overlap only)."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"stacks on different grids: {a.shape[1:]} vs {b.shape[1:]}")
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return min(float(np.sqrt(np.mean((short - long[k:k + len(short)]) ** 2))) for k in range(len(long) - len(short) + 1))


def patient_stacks(record: PatientRecord, size: int = GRID) -> dict[str, np.ndarray]:
    """Normalised stacks of each phase of a patient (images only; labels are not read).

    Raises:
        CMRDataError: an unreadable image, naming the file.
    """
    return {phase: normalised_stack(load_volume(f.image, f.time_index, _ANY_SPACING)[0], size) for phase, f in sorted(record.frames.items())}


def signature_distances(stacks: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """(N, N) signature distances: per pair the largest RMS over their common phases; inf with no common phase."""
    n = len(stacks)
    d = np.full((n, n), -np.inf)
    common = np.zeros((n, n), bool)
    for phase in sorted({p for s in stacks for p in s}):
        idx = [i for i, s in enumerate(stacks) if phase in s]
        sig = np.stack([signature(stacks[i][phase]) for i in idx]).astype(np.float64)
        sq = (sig**2).sum(1)
        rms = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * sig @ sig.T, 0) / sig.shape[1])
        block = np.ix_(idx, idx)
        d[block] = np.maximum(d[block], rms)
        common[block] = True
    d[~common] = np.inf
    np.fill_diagonal(d, 0.0)
    return d


def pair_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Exact distance of two patients: the largest ``stack_distance`` over their common phases (inf: none)."""
    phases = sorted(set(a) & set(b))
    return max((stack_distance(a[p], b[p]) for p in phases), default=float("inf"))


@dataclass
class DuplicateReport:
    """What the duplicate check found.

    Attributes:
        groups: sets of patient ids that are one person, each sorted, sorted by first id.
        pairs: every pair below the threshold: ``{"patients": [a, b], "distance", "signature_distance"}``.
        threshold: the exact-distance threshold used.
        candidate_threshold: the signature-distance threshold for candidates.
        candidates: number of candidate pairs given the exact check.
        patients: number of patients checked.
    """

    groups: list[list[str]] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    threshold: float = DUPLICATE_THRESHOLD
    candidate_threshold: float = CANDIDATE_FACTOR * DUPLICATE_THRESHOLD
    candidates: int = 0
    patients: int = 0

    def to_json(self) -> dict:
        """The report as JSON-ready data."""
        return asdict(self)


def group_pairs(pairs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Join pairs of ids into groups (connected components), each sorted, sorted by first id."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return sorted(sorted(g) for g in groups.values())


def find_duplicates(records: Sequence[PatientRecord], threshold: float = DUPLICATE_THRESHOLD,
                    candidate_threshold: float | None = None, size: int = GRID) -> DuplicateReport:
    """Find patient ids that are one person: signature candidates, then the exact check.

    Args:
        records: the cohort (every reader's PatientRecord; only images are read).
        threshold: exact distance below which two ids are one person.
        candidate_threshold: signature distance below which a pair is checked exactly (default
            ``CANDIDATE_FACTOR * threshold``).
        size: in-plane side of the common grid.

    Returns:
        the groups, the pairs with their distances, and the thresholds.

    Raises:
        CMRDataError: an unreadable image, naming the file.
        ValueError: a threshold that is not positive.
    """
    if threshold <= 0:
        raise ValueError(f"duplicate threshold must be positive, got {threshold}")
    candidate_threshold = CANDIDATE_FACTOR * threshold if candidate_threshold is None else candidate_threshold
    ids = [r.patient_id for r in records]
    stacks = [patient_stacks(r, size) for r in records]
    sig = signature_distances(stacks)
    rows, cols = np.nonzero(np.triu(sig < candidate_threshold, k=1))
    pairs = []
    for i, j in zip(rows.tolist(), cols.tolist()):
        d = pair_distance(stacks[i], stacks[j])
        if d < threshold:
            pairs.append({"patients": sorted([ids[i], ids[j]]), "distance": round(d, 4),
                          "signature_distance": round(float(sig[i, j]), 4)})
    return DuplicateReport(groups=group_pairs([p["patients"] for p in pairs]), pairs=pairs, threshold=threshold,
                           candidate_threshold=candidate_threshold, candidates=len(rows), patients=len(records))
