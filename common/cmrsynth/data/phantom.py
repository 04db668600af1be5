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
"""Procedural short-axis cardiac MRI phantoms, written in the ACDC layout: the demo's and the tests' data.

Each patient is a stack of short-axis slices from base to apex with an LV blood pool, a myocardial ring and an
RV crescent beside the septum, inside a torso with lungs, fat and textured soft tissue; then partial-volume
blur, a smooth multiplicative bias field and Rician noise. Shape depends on the pathology group and the phase:

- NOR: normal cavity and wall, LV ejection fraction ~60 %.
- DCM: dilated LV cavity, thin wall, poor contraction.
- HCM: thick wall, small cavity, strong contraction.
- MINF: a regional thinned, akinetic sector of the wall.
- RV: dilated RV.

It is a test world for the software, not a substitute for real data in any reported result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from cmrsynth.data.atomic import atomic_directory

GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")


@dataclass(frozen=True)
class GroupShape:
    """Group-typical geometry (mm) and function."""

    lv_radius: float  # ED endocardial radius at the base
    wall: float  # ED wall thickness
    lv_ef: float  # LV ejection fraction
    rv_scale: float  # RV size relative to normal
    rv_ef: float


SHAPES = {
    "NOR": GroupShape(lv_radius=24.0, wall=8.0, lv_ef=0.62, rv_scale=1.0, rv_ef=0.55),
    "DCM": GroupShape(lv_radius=32.0, wall=5.5, lv_ef=0.20, rv_scale=1.1, rv_ef=0.35),
    "HCM": GroupShape(lv_radius=19.0, wall=15.0, lv_ef=0.72, rv_scale=0.9, rv_ef=0.60),
    "MINF": GroupShape(lv_radius=28.0, wall=8.0, lv_ef=0.35, rv_scale=1.0, rv_ef=0.45),
    "RV": GroupShape(lv_radius=22.0, wall=7.5, lv_ef=0.58, rv_scale=1.7, rv_ef=0.30),
}


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = gaussian_filter(rng.standard_normal(shape), sigma)
    return f / (f.std() + 1e-8)


def _harmonics(rng: np.random.Generator, amplitude: float, order: int = 3) -> np.ndarray:
    """Random Fourier coefficients (cos, sin) for a smooth angular radius modulation."""
    return rng.normal(0, amplitude, size=(order, 2)) / np.arange(1, order + 1)[:, None]


def _modulation(phi: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    k = np.arange(1, len(coeffs) + 1)[:, None, None]
    return 1.0 + (coeffs[:, 0, None, None] * np.cos(k * phi) + coeffs[:, 1, None, None] * np.sin(k * phi)).sum(0)


def phantom_patient(
    group: str, phase: str, rng: np.random.Generator, anatomy: dict | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], dict]:
    """Draw one phantom volume and its mask.

    Args:
        group: pathology group, one of GROUPS.
        phase: ``"ED"`` or ``"ES"``.
        rng: random generator (anatomy and noise are drawn from it).
        anatomy: the patient's anatomy from its other phase, so ED and ES share position and shape.

    Returns:
        image (X, Y, S) float32 in 0..1000, mask (X, Y, S) uint8 (ACDC labels), spacing (mm), anatomy.
    """
    if group not in SHAPES:
        raise ValueError(f"unknown phantom group {group!r}; allowed: {list(SHAPES)}")
    if phase not in ("ED", "ES"):
        raise ValueError(f"unknown phase {phase!r}; allowed: ['ED', 'ES']")
    s = SHAPES[group]
    if anatomy is None:
        anatomy = {
            "n": int(rng.integers(160, 208)),
            "spacing": float(rng.uniform(1.3, 1.7)),
            "slices": int(rng.integers(8, 12)),
            "centre": rng.uniform(-12, 12, size=2),
            "theta": float(rng.uniform(np.pi * 0.75, np.pi * 1.25)),  # direction of the RV from the LV
            "size": float(rng.uniform(0.88, 1.12)),
            "endo": _harmonics(rng, 0.05),
            "rv": _harmonics(rng, 0.08),
            "infarct_at": float(rng.uniform(0, 2 * np.pi)),
            "body": rng.uniform(0.8, 0.95, size=2),
            "tissue_seed": int(rng.integers(1 << 31)),
        }
    a = anatomy
    n, sp, n_slices = a["n"], a["spacing"], a["slices"]
    coords = (np.arange(n) - n / 2) * sp
    x, y = np.meshgrid(coords, coords, indexing="ij")
    half = n * sp / 2
    image = np.zeros((n, n, n_slices), np.float32)
    mask = np.zeros((n, n, n_slices), np.uint8)
    trng = np.random.default_rng(a["tissue_seed"])
    tissue = 0.35 + 0.08 * _smooth_field(trng, (n, n), 6) + 0.04 * _smooth_field(trng, (n, n), 1.5)
    body = (x / (half * a["body"][0])) ** 2 + (y / (half * a["body"][1] * 0.8)) ** 2
    lungs = (((np.abs(x) - half * 0.45) / (half * 0.28)) ** 2 + (y / (half * 0.45)) ** 2) < 1
    contraction = np.sqrt(1 - s.lv_ef) if phase == "ES" else 1.0
    rv_contraction = np.sqrt(1 - s.rv_ef) if phase == "ES" else 1.0
    for k in range(n_slices):
        z = k / max(n_slices - 2, 1)  # 0 at the base, 1 at the apex; the last slice lies beyond it
        taper = np.sqrt(max(1 - z**2, 0.0))
        cx, cy = a["centre"]
        r = np.hypot(x - cx, y - cy)
        phi = np.arctan2(y - cy, x - cx)
        r_endo_ed = s.lv_radius * a["size"] * taper
        wall_ed = s.wall * a["size"] * (0.8 + 0.2 * taper)
        r_epi_ed = r_endo_ed + wall_ed
        # the myocardium keeps its area between ED and ES, so the wall thickens as the cavity shrinks
        r_endo = r_endo_ed * contraction
        r_epi = np.sqrt(r_endo**2 + r_epi_ed**2 - r_endo_ed**2)
        endo = r_endo * _modulation(phi, a["endo"])
        epi = r_endo + (r_epi - r_endo) * _modulation(phi, a["endo"] * 0.5)
        if group == "MINF":  # an akinetic, thinned sector: cavity bulges outwards into it
            sector = np.exp(-((np.angle(np.exp(1j * (phi - a["infarct_at"])))) ** 2) / 0.35)
            endo = endo + sector * (r_epi_ed - 3.0 - endo).clip(0) * 0.8
        lv = (r < endo) & (taper > 0.05)
        myo = (r < epi) & ~lv & (taper > 0)
        rv_taper = np.sqrt(max(1 - (z / 0.85) ** 2, 0.0))
        rv_a = s.rv_scale * a["size"] * 38.0 * rv_taper * rv_contraction
        rv_b = s.rv_scale * a["size"] * 21.0 * rv_taper * rv_contraction
        d = r_epi_ed * 0.5 + rv_b * 0.6
        ux, uy = np.cos(a["theta"]), np.sin(a["theta"])
        px, py = x - cx - d * ux, y - cy - d * uy
        u, v = px * ux + py * uy, -px * uy + py * ux
        rv_r = np.hypot(u / max(rv_b, 1e-3), v / max(rv_a, 1e-3)) / _modulation(np.arctan2(v, u), a["rv"])
        rv = (rv_r < 1) & (r >= epi + 1.5) & (rv_taper > 0.15)
        slice_mask = np.zeros((n, n), np.uint8)
        slice_mask[rv], slice_mask[myo], slice_mask[lv] = 1, 2, 3
        mask[:, :, k] = slice_mask
        img = np.where(body < 1, tissue, 0.02)
        img = np.where((body > 0.82) & (body < 1), 0.85, img)  # subcutaneous fat
        img = np.where(lungs & (body < 0.8), 0.06, img)
        heart_bg = r < (r_epi_ed + 2 * rv_b + 12)
        img = np.where(heart_bg & (body < 0.8), np.maximum(img, 0.42), img)
        img = np.where(myo, 0.27, img)
        img = np.where(lv, 0.88, img)
        img = np.where(rv, 0.82, img)
        image[:, :, k] = img
    # partial volume, MR-like texture, bias field and Rician noise
    image = gaussian_filter(image, sigma=(0.8, 0.8, 0))
    image *= 1 + 0.05 * rng.standard_normal(image.shape).astype(np.float32)
    bias = np.exp(0.25 * (rng.uniform(-1, 1) * x / half + rng.uniform(-1, 1) * y / half + rng.uniform(-0.5, 0.5) * x * y / half**2))
    image *= bias[..., None]
    sigma = rng.uniform(0.02, 0.05)
    image = np.hypot(image + sigma * rng.standard_normal(image.shape), sigma * rng.standard_normal(image.shape))
    image = (image - image.min()) / (image.max() - image.min()) * 1000.0
    return image.astype(np.float32), mask, (sp, sp, 10.0), anatomy


def write_phantom_cohort(
    root: str | Path, n_per_group: int = 2, seed: int = 0, groups: tuple[str, ...] = GROUPS, overwrite: bool = False
) -> list[str]:
    """Write a phantom cohort in the ACDC layout (``patientNNN/Info.cfg``, ED/ES frames and ``_gt`` masks).

    Args:
        root: output folder (created atomically).
        n_per_group: patients per pathology group.
        seed: seed of the whole cohort.
        groups: pathology groups to draw.
        overwrite: replace an existing folder.

    Returns:
        patient ids written.
    """
    if n_per_group < 1:
        raise ValueError(f"n_per_group must be at least 1, got {n_per_group}")
    rng = np.random.default_rng(seed)
    ids = []
    with atomic_directory(root, overwrite=overwrite) as tmp:
        for g, group in enumerate(groups):
            for i in range(n_per_group):
                pid = f"patient{g * n_per_group + i + 1:03d}"
                folder = tmp / pid
                folder.mkdir()
                es_frame = int(rng.integers(9, 15))
                anatomy = None
                for phase, frame in (("ED", 1), ("ES", es_frame)):
                    image, mask, spacing, anatomy = phantom_patient(group, phase, rng, anatomy)
                    affine = np.diag([*spacing, 1.0])
                    nib.save(nib.Nifti1Image(image.round().astype(np.int16), affine), str(folder / f"{pid}_frame{frame:02d}.nii.gz"))
                    nib.save(nib.Nifti1Image(mask, affine), str(folder / f"{pid}_frame{frame:02d}_gt.nii.gz"))
                height, weight = rng.uniform(150, 195), rng.uniform(50, 110)
                (folder / "Info.cfg").write_text(
                    f"ED: 1\nES: {es_frame}\nGroup: {group}\nHeight: {height:.1f}\nNbFrame: 30\nWeight: {weight:.1f}\n"
                )
                ids.append(pid)
    return ids
