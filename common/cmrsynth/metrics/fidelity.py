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
"""Fidelity metrics that need no downloaded weights.

- Fréchet distance and KID on features of an encoder the product trains itself (``pooled_features``: the
  real-only segmenter's pooled bottleneck). This is **not** Inception FID: numbers are comparable only between
  runs that use the same encoder. Inception FID with a local TorchScript weights file (``torchscript_features``).
- Paired metrics between images generated from real masks and the real images: SSIM, MS-SSIM, PSNR.
- Diversity: mean pairwise MS-SSIM among generated images (high means collapse).
- Dice per structure, for mask faithfulness (a real-trained segmenter's prediction on a generated image
  against the mask it was generated from).

Images are (N, 1, H, W) tensors in [-1, 1] (data range 2).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric
from scipy import linalg

from cmrsynth.labels import STRUCTURES

#: MS-SSIM scale weights for 64x64 slices: the first three of Wang et al.'s five, renormalised (five scales need
#: images larger than 160 pixels with an 11-pixel window).
MS_SSIM_WEIGHTS_3 = tuple(w / sum((0.0448, 0.2856, 0.3001)) for w in (0.0448, 0.2856, 0.3001))


@torch.no_grad()
def pooled_features(network: torch.nn.Module, images, layer: str = "bottleneck", batch_size: int = 64,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """Features of ``images`` for Fréchet distance / KID: the named layer's output, averaged over space.

    The default suits MONAI ``DynUNet`` (its ``bottleneck`` block); with the real-only segmenter this is the
    product's own encoder, trained on real cardiac MRI without any downloaded weights.

    Args:
        network: a trained network with a submodule called ``layer``.
        images: (N, 1, H, W) or (N, H, W) in the network's input range.

    Returns:
        (N, C) float64 features.
    """
    module = dict(network.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"{type(network).__name__} has no submodule {layer!r} to take features from")
    captured: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, out: captured.append(out.flatten(2).mean(2).cpu()))
    try:
        network.eval()
        x = _as_images(images)
        for i in range(0, len(x), batch_size):
            network(x[i:i + batch_size].to(device))
    finally:
        hook.remove()
    return torch.cat(captured).double().numpy()


@torch.no_grad()
def torchscript_features(path: str, images, batch_size: int = 32, size: int = 299) -> np.ndarray:
    """Features from a local TorchScript Inception file, for a true Inception FID when one is at hand.

    The file must map uint8 images (N, 3, size, size) to (N, D) features, as the ``inception-2015-12-05.pt``
    TorchScript file used by StyleGAN2-ADA and clean-fid does. Grey slices in [-1, 1] are resized bilinearly,
    repeated to three channels and quantised to 0..255. Nothing is downloaded: without the file, use
    ``pooled_features``.
    """
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: Inception TorchScript file not found (nothing is downloaded)")
    model = torch.jit.load(path, map_location="cpu").eval()
    x = _as_images(images)
    out = []
    for i in range(0, len(x), batch_size):
        b = torch.nn.functional.interpolate(x[i:i + batch_size], size=(size, size), mode="bilinear", align_corners=False)
        b = ((b.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).repeat(1, 3, 1, 1)
        try:
            f = model(b, return_features=True)
        except (RuntimeError, TypeError):  # a plain feature extractor without that keyword
            f = model(b)
        out.append(f.reshape(len(b), -1).double())
    return torch.cat(out).numpy()


def _check_features(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) arrays with the same D, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(a)} and {len(b)}")


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, Eq. 6).

    d² = |mu_a - mu_b|² + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    Args:
        features_a: (N, D) features.
        features_b: (M, D) features.

    Returns:
        the squared Fréchet distance (>= 0).
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    _check_features(a, b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise as the reference implementation does
        eps = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(max(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean), 0.0))


def kernel_distance(
    features_a: np.ndarray, features_b: np.ndarray, subsets: int = 20, subset_size: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance on any features (Bińkowski et al. 2018): unbiased MMD² with the cubic kernel.

    k(x, y) = (x·y / D + 1)³, averaged over random subsets.

    Returns:
        (mean, standard deviation) over the subsets.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    _check_features(a, b)
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def _as_images(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    if t.dim() == 3:
        t = t[:, None]
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W) or (N, H, W), got {tuple(t.shape)}")
    return t


def paired_metrics(generated, real, data_range: float = 2.0) -> dict[str, float]:
    """SSIM, MS-SSIM (3 scales) and PSNR between generated images and the real images of the same masks.

    Returns:
        means over the pairs: {"ssim", "ms_ssim", "psnr"}.
    """
    g, r = _as_images(generated), _as_images(real)
    if g.shape != r.shape:
        raise ValueError(f"generated {tuple(g.shape)} and real {tuple(r.shape)} images differ in shape")
    ssim = SSIMMetric(spatial_dims=2, data_range=data_range)(g, r)
    ms = MultiScaleSSIMMetric(spatial_dims=2, data_range=data_range, kernel_size=7, weights=MS_SSIM_WEIGHTS_3)(g, r)
    psnr = PSNRMetric(max_val=data_range)(g, r)
    return {"ssim": float(ssim.mean()), "ms_ssim": float(ms.mean()), "psnr": float(psnr.mean())}


def diversity(images, pairs: int = 200, seed: int = 0, data_range: float = 2.0) -> float:
    """Mean MS-SSIM over random pairs of distinct images of one set: near 1 means mode collapse."""
    x = _as_images(images)
    if len(x) < 2:
        raise ValueError(f"need at least 2 images, got {len(x)}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(x), pairs)
    j = (i + rng.integers(1, len(x), pairs)) % len(x)
    ms = MultiScaleSSIMMetric(spatial_dims=2, data_range=data_range, kernel_size=7, weights=MS_SSIM_WEIGHTS_3)
    return float(ms(x[i], x[j]).mean())


def dice_per_structure(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice of each structure (rv, myo, lv) between two canonical masks; NaN where both are empty."""
    out = {}  # numpy on label maps; monai.metrics.compute_dice would need one-hot tensors for these 2D numpy masks
    for name, value in STRUCTURES.items():
        p, r = prediction == value, reference == value
        total = p.sum() + r.sum()
        out[name] = float(2 * (p & r).sum() / total) if total else float("nan")
    return out
