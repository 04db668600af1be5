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
"""``Generator``: the one object that sampling, fidelity scoring, the privacy audit and the benchmarks know about
a generator. It binds a network, an objective, a codec, the class index and the default sampler.

Every generator bundle defines it under the config id ``generator`` (in ``configs/common.yaml``); consumers
build it with ``load_generator(bundle, run_root)`` and call ``sample`` and ``loss_at``, never the bundle's
other config ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrsynth.errors import CMRDataError
from cmrsynth.generative.codecs import IdentityCodec, load_module_weights
from cmrsynth.generative.conditioning import ClassIndex, guided
from cmrsynth.generative.objectives import Objective
from cmrsynth.generative.samplers import get_sampler


class BoundModel:
    """A generator's network with conditions and guidance bound in, seen through its objective.

    Answers in the objective's own space and time: ``predict`` / ``denoised`` (eps, x0), ``velocity``,
    ``alpha_sigma``, ``add_noise`` and ``loss``; counts network evaluations in ``nfe`` (a guided evaluation is one
    evaluation of two network passes).
    """

    def __init__(self, generator: Generator, mask=None, class_labels=None, guidance_scale: float = 1.0):
        if guidance_scale != 1.0 and class_labels is not None and generator.classes.null_class is None:
            raise ValueError("classifier-free guidance on classes needs a null class (a class-conditional generator)")
        self.generator, self.objective = generator, generator.objective
        self.mask, self.class_labels, self.guidance_scale = mask, class_labels, guidance_scale
        self.nfe = 0

    def output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The (guided) network output at x_t and objective times t (B,)."""
        self.nfe += 1
        return guided(self.generator.denoiser, x, self.objective.network_time(t), self.mask, self.class_labels,
                      self.guidance_scale, self.generator.classes.null_class)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) implied by the output at x_t."""
        return self.objective.predict(self.output(x, t), x, t)

    def denoised(self, x, t):
        """(eps, x0) with x0 clipped as the objective samples."""
        eps, x0 = self.predict(x, t)
        return eps, self.objective.clip(x0)

    def velocity(self, x, t):
        """dx/dt of the probability-flow ODE (continuous-time objectives)."""
        return self.objective.velocity(self.output(x, t), x, t)

    def alpha_sigma(self, t):
        """The objective's path coefficients at times t."""
        return self.objective.alpha_sigma(t)

    def add_noise(self, z0, noise, t):
        """x_t on the objective's path."""
        return self.objective.add_noise(z0, noise, t)

    def time_at_level(self, level: float, n: int, device=None) -> torch.Tensor:
        """The objective's time at a noise level in [0, 1], for n samples."""
        return self.objective.time_at_level(level, n, device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data -> the space the objective works in (the generator's codec)."""
        return self.generator.codec.encode(x)

    def loss(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per-sample training loss (mean squared error of the objective's target) at times t, (B,)."""
        x_t, target = self.objective.training_pair(z0, noise, t)
        return ((self.output(x_t, t) - target) ** 2).flatten(1).mean(1)


class Generator:
    """A trained generator behind one contract.

    Args:
        network: the denoiser (``ConditionalDenoiser``) or an ``AveragedModel`` of it (its averaged module is used,
            and a checkpoint's ``ema`` entry loads into it).
        objective: an ``Objective``.
        codec: the space the objective works in (``IdentityCodec`` for pixels).
        classes: the ``ClassIndex`` (no groups: no class conditioning).
        data_channels: channels of a sample (1 for an image, 4 for a one-hot mask).
        image_size: side of a sample when nothing else fixes it (unconditional sampling).
        sampler: default sampler name (see ``generative.samplers.SAMPLERS``).
        num_inference_steps: default steps of that sampler (None: the objective's default).
        guidance_scale: default classifier-free guidance weight.
        name: the bundle's name, recorded in reports.
    """

    def __init__(self, network: nn.Module, objective: Objective, codec=None, classes: ClassIndex | None = None,
                 data_channels: int = 1, image_size: int = 64, sampler: str = "ddim",
                 num_inference_steps: int | None = 50, guidance_scale: float = 1.0, name: str = "generator"):
        self.network, self.objective = network, objective
        self.codec, self.classes = codec or IdentityCodec(), classes or ClassIndex()
        if getattr(objective, "clip_sample", False) and not self.codec.bounded:
            raise ValueError(f"{name}: the objective clamps x0 to the pixel range [-1, 1] while sampling, which a "
                             f"{self.codec.name} latent space does not have; set clip_sample: false")
        self.data_channels, self.image_size = int(data_channels), int(image_size)
        self.check_sampler(sampler)
        self.sampler, self.num_inference_steps, self.guidance_scale = sampler, num_inference_steps, guidance_scale
        self.name, self.checkpoint = name, None

    @property
    def denoiser(self) -> nn.Module:
        """The module that is evaluated (the EMA's averaged module when the network is an AveragedModel)."""
        return self.network.module if isinstance(self.network, torch.optim.swa_utils.AveragedModel) else self.network

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (cpu for a network without any)."""
        return next(self.network.parameters(), torch.empty(0)).device

    @property
    def card(self) -> GeneratorCard:
        """What a checkpoint records about this generator, checked when one is loaded."""
        return GeneratorCard(self)

    def check_sampler(self, name: str) -> None:
        """Refuse a sampler that is unknown or that this objective cannot drive, naming the ones that fit."""
        get_sampler(name)
        if name not in self.objective.samplers:
            raise ValueError(f"sampler {name!r} does not fit a {type(self.objective).__name__}; "
                             f"allowed: {list(self.objective.samplers)}")

    def settings(self, sampler: str | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None) -> dict:
        """The sampler, steps and guidance a call uses: the given ones, else the generator's defaults."""
        return {"sampler": sampler or self.sampler,
                "num_inference_steps": self.num_inference_steps if num_inference_steps is None else num_inference_steps,
                "guidance_scale": self.guidance_scale if guidance_scale is None else guidance_scale}

    def to(self, device) -> Generator:
        """Move the network and codec to ``device``."""
        self.network.to(device)
        self.codec = self.codec.to(device)
        return self

    def eval(self) -> Generator:
        """Put the network and codec in evaluation mode."""
        self.network.eval()
        self.codec.eval()
        return self

    def bind(self, mask=None, class_labels=None, guidance_scale: float = 1.0) -> BoundModel:
        """The network with these conditions bound in (masks (B, 4, H, W) one-hot, class labels (B,))."""
        return BoundModel(self, mask, class_labels, guidance_scale)

    @torch.no_grad()
    def sample(self, n: int | None = None, mask: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
               sampler: str | None = None, num_inference_steps: int | None = None, guidance_scale: float | None = None,
               generator: torch.Generator | None = None, callback: Callable | None = None, **options) -> tuple[torch.Tensor, int]:
        """Draw samples: noise in the codec's space, the sampler over the objective's grid, then decode.

        Args:
            n: samples to draw when no mask fixes the batch.
            mask: one-hot masks (B, 4, H, W) for mask-conditioned generators.
            class_labels: (B,) classes, or None.
            sampler, num_inference_steps, guidance_scale: override the generator's defaults.
            generator: random generator of the starting noise and of stochastic steps.
            callback: ``callback(i, x)`` after every step.
            options: passed to the sampler (e.g. ``rtol`` of dopri5).

        Returns:
            (samples (B, data_channels, H, W), network evaluations per sample).
        """
        noise, z, nfe = self.sample_latent(n, mask, class_labels, sampler, num_inference_steps, guidance_scale, generator,
                                           callback, **options)
        return self.codec.decode(z), nfe

    @torch.no_grad()
    def sample_latent(self, n: int | None = None, mask: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
                      sampler: str | None = None, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                      generator: torch.Generator | None = None, callback: Callable | None = None,
                      **options) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``sample`` before decoding: (starting noise, sample in the objective's space, network evaluations per
        sample). With a deterministic sampler the pair is the teacher coupling a reflow student learns
        (``generative.distill``). Arguments as ``sample``."""
        sampler, steps, w = self.settings(sampler, num_inference_steps, guidance_scale).values()
        self.check_sampler(sampler)
        batch = mask.shape[0] if mask is not None else n
        size = tuple(mask.shape[-2:]) if mask is not None else (self.image_size, self.image_size)
        device = self.device
        times = self.objective.time_grid(steps, device)
        noise = torch.randn((batch, *self.codec.latent_shape((self.data_channels, *size))), generator=generator).to(device)
        model = self.bind(mask, class_labels, w)
        z = get_sampler(sampler)(model, noise, times, callback=callback, generator=generator, **options)
        return noise, z, model.nfe

    def example_inputs(self, batch: int = 1, fill=torch.randn, generator: torch.Generator | None = None, level: float = 0.5):
        """Inputs of one network evaluation: (x_t in latent shape filled by ``fill``, times at noise ``level``, a
        random one-hot mask or None, class labels or None), on the generator's device."""
        from cmrsynth.labels import NUM_CLASSES

        device, size = self.device, (self.image_size, self.image_size)
        shape = (batch, *self.codec.latent_shape((self.data_channels, *size)))
        z = (fill(shape) if generator is None else fill(shape, generator=generator)).to(device)
        mask = None
        if getattr(self.denoiser, "mask_mode", "none") != "none":
            mask = F.one_hot(torch.randint(0, NUM_CLASSES, (batch, *size), generator=generator), NUM_CLASSES)
            mask = mask.permute(0, 3, 1, 2).float().to(device)
        labels = torch.zeros(batch, dtype=torch.long, device=device) if self.classes.groups else None
        return z, self.objective.time_at_level(level, batch, device), mask, labels

    @torch.no_grad()
    def flops_per_sample(self, nfe: int, guidance_scale: float | None = None) -> int:
        """Floating-point operations of one sample drawn with ``nfe`` network evaluations, decoding included, counted
        by ``torch.utils.flop_counter`` (matrix products and convolutions) on one evaluation at batch 1: every
        evaluation of a sampler costs the same, and a guided one counts both passes."""
        from torch.utils.flop_counter import FlopCounterMode

        z, t, mask, labels = self.example_inputs(1, torch.zeros, level=1.0)
        w = self.settings(guidance_scale=guidance_scale)["guidance_scale"]
        model = self.bind(mask, labels, w)
        with FlopCounterMode(display=False) as evaluation:
            model.output(z, t)
        with FlopCounterMode(display=False) as decoding:
            self.codec.decode(z)
        return nfe * evaluation.get_total_flops() + decoding.get_total_flops()

    def loss_at(self, x0: torch.Tensor, level: float, mask=None, class_labels=None, noise=None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample training loss of clean data x0 (B, C, H, W) at noise level ``level`` in [0, 1]
        (0 clean, 1 pure noise), with ``noise`` or a fresh draw; what loss-based membership attacks score."""
        model = self.bind(mask, class_labels)
        z0 = model.encode(x0)
        noise = torch.randn(z0.shape, generator=generator).to(z0.device) if noise is None else noise
        return model.loss(z0, model.time_at_level(level, len(z0), z0.device), noise)

    def load_checkpoint(self, path: str | Path, key: str = "ema") -> Generator:
        """Load weights from a training checkpoint (its ``key`` entry) or a file holding them alone
        (``best_ema.pt``); refuse one written for another generator or shape, naming the file."""
        path = Path(path)
        if not path.is_file():
            raise CMRDataError(path, "generator checkpoint not found (train the generator bundle first)")
        state = torch.load(path, map_location=self.device, weights_only=True)
        if "card" in state:
            self.card.check(state["card"], path)
        else:
            logging.getLogger(__name__).warning(f"{path}: no generator card; cannot check it was written for {self.name}")
        load_module_weights(self.network, state.get(key, state), path, f"{self.name}'s network")
        if isinstance(self.codec, nn.Module):  # a codec with weights (an autoencoder) travels in the checkpoint
            if "codec" not in state:
                raise CMRDataError(path, f"checkpoint holds no codec weights; {self.name} needs its {self.codec.name}")
            load_module_weights(self.codec, state["codec"], path, f"{self.name}'s {self.codec.name}")
        self.checkpoint = str(path)
        return self


class GeneratorCard:
    """The facts a checkpoint records about its generator (objective, data channels, codec); a checkpoint entry
    with ``state_dict`` / ``load_state_dict`` so ``ResumableCheckpoint`` and ``CheckpointSaver`` store it, and a
    resumed run refuses a checkpoint of another objective."""

    def __init__(self, generator: Generator):
        self.generator = generator

    def facts(self) -> dict:
        """What must match: the objective's description, codec, data channels and number of classes."""
        g = self.generator
        return {**g.objective.describe(), "codec": g.codec.name, "data_channels": g.data_channels,
                "num_classes": g.classes.num_classes}

    def state_dict(self) -> dict:
        """The facts, as a checkpoint entry."""
        return self.facts()

    def check(self, recorded: dict, path: str | Path) -> None:
        """Raise ``CMRDataError`` naming the file when ``recorded`` differs from this generator's facts."""
        ours = self.facts()
        differ = {k: (recorded.get(k), v) for k, v in ours.items() if recorded.get(k) != v}
        if differ:
            listed = ", ".join(f"{k}: {a!r} in the file, {b!r} here" for k, (a, b) in differ.items())
            raise CMRDataError(path, f"checkpoint was written for another generator ({listed})")

    def load_state_dict(self, state: dict) -> None:
        """Check a resumed checkpoint's facts against this generator's."""
        self.check(state, "checkpoint")
