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
"""Figures shared by every stage: image grids with mask overlays, written as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

#: Overlay colours by canonical label: RV blue, myocardium green, LV red.
LABEL_COLOURS = {1: (0.15, 0.45, 1.0), 2: (0.1, 0.85, 0.25), 3: (1.0, 0.2, 0.15)}


def overlay_rgb(image: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.35) -> np.ndarray:
    """Blend a 2D image (any range) with a canonical mask into an RGB array in [0, 1].

    Args:
        image: (H, W) intensities; scaled by their own min/max.
        mask: (H, W) canonical labels, or None for the plain image.
        alpha: opacity of the label colours.

    Returns:
        (H, W, 3) float array.
    """
    img = np.asarray(image, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    grey = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if mask is not None:
        if mask.shape != img.shape:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {img.shape}")
        for value, colour in LABEL_COLOURS.items():
            sel = mask == value
            rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.asarray(colour)
    return rgb


def save_overlay_grid(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None,
    path: str | Path,
    titles: Sequence[str] | None = None,
    ncols: int = 6,
    tile_inches: float = 1.8,
) -> Path:
    """Draw 2D images (with optional mask overlays) in a grid and save it as a PNG.

    Args:
        images: (H, W) arrays.
        masks: canonical masks of the same shapes, or None entries / None for no overlay.
        path: output PNG.
        titles: one short caption per tile.
        ncols: tiles per row.
        tile_inches: tile size.

    Returns:
        the written path.
    """
    if len(images) == 0:
        raise ValueError("no images to draw")
    masks = list(masks) if masks is not None else [None] * len(images)
    if len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    ncols = min(ncols, len(images))
    nrows = int(np.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * tile_inches, nrows * tile_inches), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, msk) in enumerate(zip(images, masks)):
        ax = axes.flat[i]
        ax.imshow(np.rot90(overlay_rgb(img, msk)), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.tight_layout(pad=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def datalist_preview(root: str | Path, png: str | Path, n: int = 12, section: str = "training") -> Path:
    """Draw evenly spaced slices of a prepared datalist (``root/datalist.json``) with their masks."""
    import json

    import nibabel as nib

    root = Path(root)
    entries = json.loads((root / "datalist.json").read_text())[section]
    picked = entries[:: max(1, len(entries) // n)][:n]
    images = [np.asanyarray(nib.load(root / e["image"]).dataobj) for e in picked]
    masks = [np.asanyarray(nib.load(root / e["label"]).dataobj) if "label" in e else None for e in picked]
    titles = [f"{e.get('group') or ''} {e.get('phase', '')} s{e.get('slice', '')}".strip() for e in picked]
    return save_overlay_grid(images, masks, png, titles)


def label_legend_cmap() -> ListedColormap:
    """Colour map for label images (0 transparent black, then RV, MYO, LV colours)."""
    return ListedColormap([(0, 0, 0)] + [LABEL_COLOURS[k] for k in (1, 2, 3)])
