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
"""Segmentation utility on real patients: per-volume Dice and HD95, clinical indices, bootstrap intervals.

Slices of one patient and phase are restacked into a volume in slice order with their spacing, so the scores
are per patient volume as in the ACDC challenge, not per slice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from cmrsynth.labels import NUM_CLASSES, STRUCTURES

#: Myocardial tissue density (g/ml) used for the myocardial mass.
MYOCARDIUM_DENSITY = 1.05


def restack(slices: Iterable[Mapping]) -> dict[tuple[str, str], dict]:
    """Group slices into volumes.

    Args:
        slices: dicts with patient, phase, slice (index), spacing (sx, sy, sz) and 2D arrays
            under pred and label.

    Returns:
        {(patient, phase): {"pred": (X, Y, S), "label": (X, Y, S), "spacing": (sx, sy, sz), "group": ...}}.
    """
    groups: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for s in slices:
        groups[(s["patient"], s["phase"])].append(s)
    volumes = {}
    for key, items in groups.items():
        items = sorted(items, key=lambda s: s["slice"])
        volumes[key] = {
            "pred": np.stack([np.asarray(s["pred"]) for s in items], axis=-1),
            "label": np.stack([np.asarray(s["label"]) for s in items], axis=-1),
            "spacing": tuple(float(v) for v in items[0]["spacing"]),
            "group": items[0].get("group"),
        }
    return volumes


def _one_hot(volume: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(volume.astype(np.int64))
    return torch.nn.functional.one_hot(t, NUM_CLASSES).movedim(-1, 0)[None].float()


def volume_scores(pred: np.ndarray, label: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """Dice and 95th-percentile Hausdorff distance (mm) per structure for one volume.

    Returns:
        {"dice_lv", "dice_myo", "dice_rv", "hd95_lv", ...}; NaN where a structure is absent from both
        (Dice) or from either (HD95).
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    hd = compute_hausdorff_distance(_one_hot(pred), _one_hot(label), include_background=True, percentile=95,
                                    spacing=list(spacing))[0]
    out = {}
    for name, value in STRUCTURES.items():
        p, r = pred == value, label == value
        total = p.sum() + r.sum()
        out[f"dice_{name}"] = float(2 * (p & r).sum() / total) if total else float("nan")
        out[f"hd95_{name}"] = float(hd[value]) if p.any() and r.any() else float("nan")
    return out


def structure_volumes_ml(mask: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """Volume of each structure in ml (voxel count x voxel volume / 1000)."""
    voxel = spacing[0] * spacing[1] * spacing[2] / 1000.0
    return {name: float((mask == value).sum() * voxel) for name, value in STRUCTURES.items()}


def clinical_indices(ed: np.ndarray, es: np.ndarray, spacing_ed, spacing_es) -> dict[str, float]:
    """LV and RV end-diastolic / end-systolic volumes (ml), ejection fractions (%) and myocardial mass (g, at ED)."""
    v_ed, v_es = structure_volumes_ml(ed, spacing_ed), structure_volumes_ml(es, spacing_es)
    out = {"lv_edv": v_ed["lv"], "lv_esv": v_es["lv"], "rv_edv": v_ed["rv"], "rv_esv": v_es["rv"],
           "myo_mass": v_ed["myo"] * MYOCARDIUM_DENSITY}
    for side in ("lv", "rv"):
        edv = out[f"{side}_edv"]
        out[f"{side}_ef"] = 100.0 * (edv - out[f"{side}_esv"]) / edv if edv > 0 else float("nan")
    return out


def bootstrap_ci(values: Iterable[float], statistic: Callable = np.mean, n: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic over independent units (patients); NaNs are dropped."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = [statistic(v[rng.integers(0, len(v), len(v))]) for _ in range(n)]
    return float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))


def summarise(per_patient: Mapping[str, Mapping[str, float]], seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and bootstrap 95 % interval over patients of every score."""
    keys = sorted({k for scores in per_patient.values() for k in scores})
    out = {}
    for k in keys:
        v = np.array([s.get(k, np.nan) for s in per_patient.values()], float)
        finite = v[np.isfinite(v)]
        lo, hi = bootstrap_ci(finite, seed=seed)
        out[k] = {"mean": float(finite.mean()) if len(finite) else float("nan"),
                  "sd": float(finite.std(ddof=1)) if len(finite) > 1 else float("nan"),
                  "ci95": [lo, hi], "n": int(len(finite))}
    return out


def evaluate_patients(slices: Iterable[Mapping], seed: int = 0) -> dict:
    """Score a set of predicted slices per patient volume.

    Returns:
        {"per_patient": {patient: {"ED/dice_lv": ..., "ES/hd95_rv": ..., "lv_ef_error": ...}},
         "summary": {score: {mean, sd, ci95, n}}}; clinical-index errors are prediction minus ground truth.
    """
    volumes = restack(slices)
    per_patient: dict[str, dict[str, float]] = defaultdict(dict)
    for (patient, phase), v in volumes.items():
        for k, score in volume_scores(v["pred"], v["label"], v["spacing"]).items():
            per_patient[patient][f"{phase}/{k}"] = score
    for patient in per_patient:
        if (patient, "ED") in volumes and (patient, "ES") in volumes:
            ed, es = volumes[(patient, "ED")], volumes[(patient, "ES")]
            truth = clinical_indices(ed["label"], es["label"], ed["spacing"], es["spacing"])
            pred = clinical_indices(ed["pred"], es["pred"], ed["spacing"], es["spacing"])
            for k in truth:
                per_patient[patient][f"{k}_error"] = pred[k] - truth[k]
    return {"per_patient": dict(per_patient), "summary": summarise(per_patient, seed)}
