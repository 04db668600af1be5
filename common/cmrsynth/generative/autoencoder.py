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
"""Stage 1 of latent diffusion: the losses that train a ``KLAutoencoder`` with MONAI's stock ``AdversarialTrainer``.

``AdversarialTrainer`` sums a reconstruction loss and a generator adversarial loss for the autoencoder, then
trains the discriminator on real and reconstructed slices. The three callables here fill its slots:
``ReconstructionKLLoss`` (L1 + a small KL weight, plus a perceptual term only when local weights are given),
``GeneratorAdversarialLoss`` (switched on after a warm-up, so the autoencoder first learns to reconstruct) and
``DiscriminatorAdversarialLoss``. A ``PatchDiscriminator`` returns its intermediate features; the last entry is
the patch logits both adversarial losses score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.losses import PatchAdversarialLoss

from cmrsynth.generative.codecs import KLAutoencoder


def _logits(output) -> torch.Tensor:
    return output[-1] if isinstance(output, (list, tuple)) else output


class ReconstructionKLLoss:
    """L1 reconstruction + ``kl_weight`` x the autoencoder's KL term (+ ``perceptual_weight`` x a perceptual loss).

    Args:
        autoencoder: the trained ``KLAutoencoder`` (its last forward's ``kl``).
        kl_weight: weight of the KL term (small: the latent should stay informative, only loosely Gaussian).
        perceptual: a perceptual loss (e.g. ``monai.losses.PerceptualLoss`` on local weights), or None.
        perceptual_weight: its weight.
    """

    def __init__(self, autoencoder: KLAutoencoder, kl_weight: float = 1e-6, perceptual: Callable | None = None,
                 perceptual_weight: float = 0.0):
        self.autoencoder, self.kl_weight = autoencoder, kl_weight
        self.perceptual, self.perceptual_weight = perceptual, perceptual_weight

    def __call__(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The summed loss of the autoencoder's last forward."""
        loss = (reconstruction - target).abs().mean() + self.kl_weight * self.autoencoder.kl
        if self.perceptual is not None and self.perceptual_weight:
            loss = loss + self.perceptual_weight * self.perceptual(reconstruction.float(), target.float())
        return loss


class GeneratorAdversarialLoss:
    """The autoencoder's adversarial term: ``weight`` x the patch loss of its reconstructions scored as real,
    zero during the first ``warmup_iterations`` (attach it to the trainer, as a handler, to follow its iteration).

    Args:
        weight: weight of the adversarial term once on.
        warmup_iterations: iterations of reconstruction-only training.
        criterion: ``PatchAdversarialLoss`` criterion (least_squares, bce, hinge).
    """

    def __init__(self, weight: float = 0.01, warmup_iterations: int = 0, criterion: str = "least_squares"):
        self.weight, self.warmup_iterations = weight, warmup_iterations
        self.loss = PatchAdversarialLoss(criterion=criterion)
        self.iteration = 0

    def attach(self, engine) -> None:
        """Follow the engine's iteration (resumed runs included)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED, lambda e: setattr(self, "iteration", e.state.iteration))

    @property
    def active(self) -> bool:
        """Whether the warm-up is over."""
        return self.weight > 0 and self.iteration > self.warmup_iterations

    def __call__(self, fake_output: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Weighted adversarial loss of the discriminator's output for reconstructions."""
        logits = _logits(fake_output)
        if not self.active:
            return logits.new_zeros(())
        return self.weight * self.loss(logits, target_is_real=True, for_discriminator=False)


class DiscriminatorAdversarialLoss:
    """The discriminator's loss: mean of its patch losses on real slices (target real) and reconstructions
    (target fake), times ``weight``. It trains from the first iteration, so the critic is already informative when
    the autoencoder's adversarial term switches on.
    """

    def __init__(self, weight: float = 1.0, criterion: str = "least_squares"):
        self.weight, self.loss = weight, PatchAdversarialLoss(criterion=criterion)

    def __call__(self, real_output, fake_output) -> torch.Tensor:
        """Weighted discriminator loss."""
        real = self.loss(_logits(real_output), target_is_real=True, for_discriminator=True)
        fake = self.loss(_logits(fake_output), target_is_real=False, for_discriminator=True)
        return self.weight * 0.5 * (real + fake)


class RecordTotalLoss:
    """Give the autoencoder trainer's output the form MONAI's stock handlers read: the summed loss
    (reconstruction + adversarial) as ``loss``, decollated into per-sample dicts.

    ``AdversarialTrainer`` stores that sum only under AMP, and it never fires the MODEL_COMPLETED event on which
    MONAI workflows decollate their output; StatsHandler and the MLflow handler of ``--tracking mlflow`` read
    ``from_engine(['loss'], first=True)`` of a decollated output. List this handler before them.
    """

    def attach(self, engine) -> None:
        """Register on ITERATION_COMPLETED (the trainer's own adversarial events are registered after its handlers)."""
        from ignite.engine import Events
        from monai.data import decollate_batch
        from monai.utils import AdversarialKeys

        def record(e):
            out = e.state.output
            total = out[AdversarialKeys.RECONSTRUCTION_LOSS] + out[AdversarialKeys.GENERATOR_LOSS]
            e.state.output = decollate_batch({**out, "loss": total}, detach=True)

        engine.add_event_handler(Events.ITERATION_COMPLETED, record)
