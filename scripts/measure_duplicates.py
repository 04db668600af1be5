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
"""Measure the duplicate-subject distances of a cohort: where the threshold of ``cmrsynth.data.duplicates`` comes from.

For every pair of patients, the exact distance (z-scored aligned slices, RMS) and the signature distance; each
patient's nearest other patient; pairs below the threshold; the distribution over distinct pairs; planted copies
(a patient's own volumes rescaled and re-noised, the near-duplicates the check must catch); and whether the
duplicate groups straddle the plain seed-0 split. Writes distances and patient ids only, never images:

    python scripts/measure_duplicates.py --input ../shared/data/acdc --out docs/data/duplicates_acdc.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))

from cmrsynth.data.atomic import write_json_atomic  # noqa: E402
from cmrsynth.data.duplicates import (  # noqa: E402
    DUPLICATE_THRESHOLD,
    GRID,
    group_pairs,
    normalised_stack,
    pair_distance,
    patient_stacks,
    signature_distances,
)
from cmrsynth.data.nifti import load_volume  # noqa: E402
from cmrsynth.data.prepare import PrepareConfig, read_cohort  # noqa: E402
from cmrsynth.data.splits import split_patients  # noqa: E402
from cmrsynth.errors import CMRDataError  # noqa: E402

#: Planted copies: intensity scale, and Gaussian noise sd as a fraction of the rescaled copy's intensity range.
PLANTS = ((1.0, 0.0), (0.6, 0.005), (1.7, 0.01), (0.6, 0.02), (1.7, 0.03), (0.6, 0.05))


def all_distances(stacks: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(N, N) exact and signature distances of every pair (diagonal inf)."""
    n = len(stacks)
    exact = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(i + 1, n):
            exact[i, j] = exact[j, i] = pair_distance(stacks[i], stacks[j])
    sig = signature_distances(stacks)
    np.fill_diagonal(sig, np.inf)
    return exact, sig


def _quantiles(values: np.ndarray) -> dict:
    v = np.asarray(values, float)
    return {"n": int(v.size), "min": round(float(v.min()), 4),
            **{f"p{q:g}": round(float(np.percentile(v, q)), 4) for q in (1, 5, 50)}, "max": round(float(v.max()), 4)}


def planted_copies(records, stacks: list[dict], every: int, seed: int) -> list[dict]:
    """Each ``every``-th patient's ED / ES volumes rescaled and re-noised (``PLANTS``): distance to the original."""
    rng = np.random.default_rng(seed)
    rows = []
    for record, original in list(zip(records, stacks))[::every]:
        volumes = {p: load_volume(f.image, f.time_index)[0] for p, f in record.frames.items()}
        for scale, sd in PLANTS:
            copy = {p: normalised_stack(scale * v + rng.normal(0, sd * scale * float(np.ptp(v)), v.shape), GRID)
                    for p, v in volumes.items()}
            rows.append({"patient": record.patient_id, "scale": scale, "noise_sd_of_range": sd,
                         "distance": round(pair_distance(original, copy), 4)})
    return rows


def split_effect(records, groups: list[list[str]], cfg: PrepareConfig) -> dict:
    """The plain seed split against the one that keeps each group together: which groups straddled, who moved."""
    cohort = {r.patient_id: r.group for r in records}
    plain = split_patients(cohort, cfg.fractions, cfg.seed)
    grouped = split_patients(cohort, cfg.fractions, cfg.seed, groups)
    return {"seed": cfg.seed, "plain_split_of_groups": [{p: plain[p] for p in g} for g in groups],
            "straddling": [g for g in groups if len({plain[p] for p in g}) > 1],
            "moved": {p: [plain[p], grouped[p]] for p in cohort if plain[p] != grouped[p]}}


def measure(records, threshold: float, every: int, seed: int) -> dict:
    """All the numbers of the module docstring as one JSON-ready dict."""
    ids = [r.patient_id for r in records]
    stacks = [patient_stacks(r) for r in records]
    exact, sig = all_distances(stacks)
    pairs = sorted((float(exact[i, j]), float(sig[i, j]), ids[i], ids[j]) for i, j in zip(*np.triu_indices(len(ids), 1)))
    groups = group_pairs([(a, b) for d, _, a, b in pairs if d < threshold])
    subject = {p: g[0] for g in groups for p in g}
    same = lambda a, b: subject.get(a, a) == subject.get(b, b)  # noqa: E731
    distinct = [(d, s, a, b) for d, s, a, b in pairs if not same(a, b)]
    nearest_distinct = [min(exact[i, j] for j in range(len(ids)) if j != i and not same(ids[i], ids[j])) for i in range(len(ids))]
    plants = planted_copies(records, stacks, every, seed)
    return {
        "patients": len(ids), "grid": GRID, "threshold": threshold,
        "duplicate_pairs": [{"patients": [a, b], "distance": round(d, 4), "signature_distance": round(s, 4)}
                            for d, s, a, b in pairs if same(a, b)],
        "duplicate_groups": groups,
        "distinct_pairs": _quantiles([d for d, *_ in distinct]),
        "closest_distinct_pairs": [{"patients": [a, b], "distance": round(d, 4), "signature_distance": round(s, 4)}
                                   for d, s, a, b in distinct[:5]],
        "signature_distinct_pairs": _quantiles([s for _, s, *_ in distinct]),
        "nearest_other_distinct": _quantiles(nearest_distinct),
        "nearest_other_patient": {ids[i]: {"patient": ids[int(exact[i].argmin())], "distance": round(float(exact[i].min()), 4)}
                                  for i in range(len(ids))},
        "planted_copies": plants,
        "planted_copies_max": {f"scale {s:g}, noise {sd:g}": max(r["distance"] for r in plants
                                                                   if (r["scale"], r["noise_sd_of_range"]) == (s, sd))
                               for s, sd in PLANTS},
        "split": split_effect(records, groups, PrepareConfig(seed=0)),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: measure, write the JSON, print the headline numbers."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="cohort folder (acdc, mnms, mnms2) or datalist JSON")
    p.add_argument("--reader", default="acdc", choices=["acdc", "mnms", "mnms2", "datalist"])
    p.add_argument("--info-csv", default=None)
    p.add_argument("--out", required=True, help="JSON file to write (distances and ids only)")
    p.add_argument("--threshold", type=float, default=DUPLICATE_THRESHOLD)
    p.add_argument("--plant-every", type=int, default=7, help="plant copies of every N-th patient")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        result = measure(read_cohort(args.reader, args.input, args.info_csv), args.threshold, args.plant_every, args.seed)
    except (CMRDataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(args.out, result)
    print(f"{result['patients']} patients; duplicate pairs (< {args.threshold}): {result['duplicate_pairs'] or 'none'}")
    print(f"distinct pairs: {result['distinct_pairs']}; nearest other distinct: {result['nearest_other_distinct']}")
    print(f"planted copies, largest distance: {result['planted_copies_max']}")
    print(f"seed-0 split: straddling groups {result['split']['straddling']}, moved {result['split']['moved']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
