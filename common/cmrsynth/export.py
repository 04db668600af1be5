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
"""TorchScript export of every inference network: a generator's denoiser (and its autoencoder's decoder) and the
segmenter, for MONAI Deploy or any TorchScript runtime.

MONAI's ``ckpt_export`` scripts the network, which fails on DiffusionModelUNet's attention blocks; tracing a wrapper
that takes every input as a tensor (x_t, times, mask, class labels; the unused ones ignored) works for all of them. A traced network keeps the image size it was traced at; the batch size is free.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn


class TraceableDenoiser(nn.Module):
    """A generator's denoiser with a fixed four-tensor signature (inputs it does not use are ignored)."""

    def __init__(self, denoiser: nn.Module, uses_mask: bool, uses_classes: bool):
        super().__init__()
        self.denoiser, self.uses_mask, self.uses_classes = denoiser, uses_mask, uses_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, t, mask if self.uses_mask else None, class_labels if self.uses_classes else None)


class Decoder(nn.Module):
    """A codec's decode as a module (latent -> image)."""

    def __init__(self, codec):
        super().__init__()
        self.codec = codec

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(z)


def generator_inputs(generator, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs of the traced denoiser (unused mask / class inputs as placeholders)."""
    z, t, mask, labels = generator.example_inputs(batch, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(batch, 1, 1, 1) if mask is None else mask
    labels = torch.zeros(batch, dtype=torch.long) if labels is None else labels
    return z, t, mask, labels


@torch.no_grad()
def export_generator(generator, out_dir: str | Path) -> dict[str, Path]:
    """Trace a generator's denoiser (``denoiser.ts``) and, for a latent generator, its decoder (``decoder.ts``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator.eval()
    inputs = generator_inputs(generator)
    wrapper = TraceableDenoiser(generator.denoiser, getattr(generator.denoiser, "mask_mode", "none") != "none",
                                bool(generator.classes.groups)).eval()
    paths = {"denoiser": out_dir / "denoiser.ts"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants: intended
        torch.jit.trace(wrapper, inputs, check_trace=False).save(str(paths["denoiser"]))
        if hasattr(generator.codec, "autoencoder"):
            paths["decoder"] = out_dir / "decoder.ts"
            torch.jit.trace(Decoder(generator.codec).eval(), (inputs[0],), check_trace=False).save(str(paths["decoder"]))
    return paths


@torch.no_grad()
def export_network(network: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace a one-input network (the segmenter) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.trace(network.eval(), (example,), check_trace=False).save(str(path))
    return path
