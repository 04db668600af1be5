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
"""Conditioning: the mask-conditioned network behind one signature, the (group, phase[, position]) class index, and
classifier-free guidance."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import Enum

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import SPADEDiffusionModelUNet

from cmrsynth.labels import slice_level


class MaskMode(str, Enum):
    """How the one-hot mask reaches the network."""

    CONCAT = "concat"  # concatenated to x_t
    SPADE = "spade"  # through SPADE normalisation (SPADEDiffusionModelUNet)
    NONE = "none"  # no mask (the mask generator)


def _concat(network, x, t, mask, class_labels):
    if mask.shape[-2:] != x.shape[-2:]:  # a latent grid: each cell gets the share of each structure it covers
        mask = F.interpolate(mask, size=x.shape[-2:], mode="area")
    return network(torch.cat([x, mask], dim=1), t, class_labels=class_labels)


def _spade(network, x, t, mask, class_labels):
    # SPADE layers resize the full-resolution mask to each feature map themselves
    return network(x, t, seg=mask, class_labels=class_labels)


def _no_mask(network, x, t, mask, class_labels):
    return network(x, t, class_labels=class_labels)


_CALLS: dict[MaskMode, Callable] = {MaskMode.CONCAT: _concat, MaskMode.SPADE: _spade, MaskMode.NONE: _no_mask}


class ConditionalDenoiser(nn.Module):
    """A diffusion UNet with mask and class conditioning behind one signature.

    Args:
        network: a ``DiffusionModelUNet`` (its in_channels = data channels + mask channels when
            ``mask_mode="concat"``) or a ``SPADEDiffusionModelUNet`` (``mask_mode="spade"``).
        mask_mode: ``"concat"``, ``"spade"`` or ``"none"`` (unconditional on masks, e.g. the mask generator).
    """

    MASK_MODES = tuple(m.value for m in MaskMode)

    def __init__(self, network: nn.Module, mask_mode: str = "concat"):
        super().__init__()
        if mask_mode not in self.MASK_MODES:
            raise ValueError(f"unknown mask_mode {mask_mode!r}; allowed: {list(self.MASK_MODES)}")
        if (mask_mode == "spade") != isinstance(network, SPADEDiffusionModelUNet):
            raise ValueError(f"mask_mode {mask_mode!r} does not fit a {type(network).__name__}")
        self.network, self.mask_mode = network, mask_mode

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network output for x_t (B, C, H, W) at network times (B,); mask is one-hot (B, 4, H, W)."""
        if self.mask_mode != "none" and mask is None:
            raise ValueError(f"mask_mode {self.mask_mode!r} needs a mask")
        return _CALLS[MaskMode(self.mask_mode)](self.network, x, timesteps, mask, class_labels)


class ClassIndex:
    """The one definition of the class embedding index:
    class = (group_index * len(phases) + phase_index) * max(len(positions), 1) + position_index.

    An unknown or missing group, phase or (with positions) slice position gets ``null_class``, the classifier-free
    "no condition" class (the last embedding). With no groups there is no class embedding (``num_classes`` = 0).

    Args:
        groups: pathology groups in embedding order, e.g. ["NOR", "DCM", "HCM", "MINF", "RV"]; empty for none.
        phases: phases in embedding order.
        positions: optional named levels of the stack, base to apex, e.g. ["basal", "mid", "apical"]: equal
            thirds of the datalist's ``slice_position``; empty to leave position out of the class.
    """

    def __init__(self, groups: Sequence[str] | None = (), phases: Sequence[str] = ("ED", "ES"),
                 positions: Sequence[str] | None = ()):
        self.groups, self.phases, self.positions = list(groups or []), list(phases), list(positions or [])
        self.num_classes = len(self.groups) * len(self.phases) * max(len(self.positions), 1)
        self.null_class = self.num_classes if self.num_classes else None

    def index(self, group, phase, position: str | None = None) -> int | None:
        """Class of (group, phase[, position]); ``null_class`` when one is unknown; None without groups."""
        if not self.groups:
            return None
        if group not in self.groups or phase not in self.phases:
            return self.null_class
        index = self.groups.index(group) * len(self.phases) + self.phases.index(phase)
        if not self.positions:
            return index
        if position not in self.positions:
            return self.null_class
        return index * len(self.positions) + self.positions.index(position)

    def position(self, entry: Mapping) -> str | None:
        """An entry's named position: its ``position`` or the level of its ``slice_position``."""
        return entry.get("position") or slice_level(entry.get("slice_position"), self.positions)

    def index_of(self, entry: Mapping) -> int | None:
        """Class of a datalist entry (``group``, ``phase``, and ``position`` / ``slice_position`` with positions)."""
        return self.index(entry.get("group"), entry.get("phase"), self.position(entry))

    def labels(self, entries: Sequence[Mapping], device="cpu") -> torch.Tensor | None:
        """Class index of each entry, or None without groups."""
        if not self.groups:
            return None
        return torch.tensor([self.index_of(e) for e in entries], device=device)

    def plan(self, per_class: int, only: Mapping[str, Sequence[str]] | None = None) -> list[dict]:
        """``per_class`` samples of every class, each {"group", "phase", "position", "class"} (position None without
        positions); one unconditional class (all None) without groups.

        Args:
            per_class: samples per class.
            only: draw only these classes, e.g. {"position": ["apical"]} or {"group": ["HCM"], "phase": ["ES"]}.
        """
        if not self.groups:
            if only:
                raise ValueError(f"only={dict(only)} needs a class-conditional generator; this one has no classes")
            return [dict(group=None, phase=None, position=None, **{"class": None}) for _ in range(per_class)]
        known = {"group": self.groups, "phase": self.phases, "position": self.positions}
        for key, values in (only or {}).items():
            unknown = list(values) if key not in known else [v for v in values if v not in known[key]]
            if key not in known or unknown:
                allowed = known.get(key) or f"keys {sorted(k for k, v in known.items() if v)}"
                raise ValueError(f"only: {key}={unknown} is not a class of this generator; allowed: {allowed}")
        cells = [dict(group=g, phase=p, position=pos) for g in self.groups for p in self.phases for pos in (self.positions or [None])]
        cells = [c for c in cells if all(c[k] in v for k, v in (only or {}).items())]
        return [{**c, "class": self.index(c["group"], c["phase"], c["position"])} for c in cells] * per_class


def guided(network: Callable, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None,
           class_labels: torch.Tensor | None, guidance_scale: float, null_class: int | None) -> torch.Tensor:
    """Classifier-free guidance: out = out_uncond + w (out_cond - out_uncond); w = 1 is plain conditioning.

    The unconditional branch uses ``null_class`` for classes and an all-zero mask (as in training dropout).

    References:
        Ho & Salimans, Classifier-Free Diffusion Guidance, 2022, Eq. (6).
    """
    cond = network(x, t, mask=mask, class_labels=class_labels)
    if guidance_scale == 1.0:
        return cond
    null_labels = None if class_labels is None else torch.full_like(class_labels, null_class)
    null_mask = None if mask is None else torch.zeros_like(mask)
    uncond = network(x, t, mask=null_mask, class_labels=null_labels)
    return uncond + guidance_scale * (cond - uncond)
