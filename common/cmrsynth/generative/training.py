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
"""Training batches for any objective, through MONAI's stock ``SupervisedTrainer``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch

from cmrsynth.generative.codecs import IdentityCodec
from cmrsynth.generative.objectives import Objective


def plain_tensor(x, device=None, non_blocking: bool = False) -> torch.Tensor:
    """A float ``torch.Tensor`` on ``device``, stripped of MONAI metadata.

    A MetaTensor fed to a network routes every operation through ``__torch_function__`` to carry metadata that
    means nothing to a denoiser.
    """
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return torch.as_tensor(x).to(device=device, non_blocking=non_blocking).float()


class ObjectivePrepareBatch(PrepareBatch):
    """Turn a batch of clean samples into (x_t, target, (), conditions) for the objective's regression.

    The trainer's ``SimpleInferer`` then calls ``network(x_t, timesteps=..., mask=..., class_labels=...)`` and the
    loss compares the output with the target. Classifier-free guidance (Ho & Salimans 2022) trains one network
    for both the conditional and the unconditional case: with probability ``condition_dropout`` a sample's class
    becomes ``null_class`` and its mask all zeros.

    Args:
        objective: an ``Objective`` (``DiffusionObjective``, ``FlowMatchingObjective``).
        image_key: batch key of the clean sample, (B, C, H, W) in [-1, 1].
        mask_key: batch key of the one-hot conditioning mask, or None.
        class_key: batch key of integer class labels (B,), or None.
        condition_dropout: probability of dropping a sample's conditions while training.
        null_class: class index meaning "no class" (the last embedding).
        seed: draw noise and times from a generator with this seed, restarted whenever the attached engine
            starts a run, so a validation loss compares like with like; None for fresh randomness.
        codec: encodes the clean sample into the space the objective works in (identity by default).
    """

    def __init__(
        self,
        objective: Objective,
        image_key: str = "image",
        mask_key: str | None = None,
        class_key: str | None = None,
        condition_dropout: float = 0.0,
        null_class: int | None = None,
        seed: int | None = None,
        codec=None,
    ):
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        if condition_dropout > 0 and class_key is not None and null_class is None:
            raise ValueError("condition_dropout on classes needs null_class (the unconditional class index)")
        self.objective, self.image_key, self.mask_key, self.class_key = objective, image_key, mask_key, class_key
        self.condition_dropout, self.null_class, self.seed = condition_dropout, null_class, seed
        self.codec = codec or IdentityCodec()
        self.generator: torch.Generator | None = None
        self.reset()

    def reset(self) -> None:
        """Restart the seeded generator (no-op without a seed)."""
        self.generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None

    def attach(self, engine) -> None:
        """Restart the generator at every run of ``engine`` (lets the object sit in a handler list)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.reset())

    def get_noise(self, x0: torch.Tensor) -> torch.Tensor:
        """eps ~ N(0, I), the shape of x0."""
        return torch.randn(x0.shape, generator=self.generator).to(x0.device)

    def get_timesteps(self, x0: torch.Tensor) -> torch.Tensor:
        """The objective's training times, one per sample."""
        return self.objective.sample_times(x0.shape[0], self.generator).to(x0.device)

    def couple(self, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Pair the batch's noise with its data as the objective says (e.g. an exact-OT plan)."""
        return self.objective.couple(noise, x0)

    def _keep(self, n: int, device) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) >= self.condition_dropout).to(device)

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        """Return (x_t, target, (), {"timesteps", "mask", "class_labels"}) for the trainer's inferer."""
        with torch.no_grad():
            x0 = self.codec.encode(plain_tensor(batchdata[self.image_key], device, non_blocking))
        noise, t = self.get_noise(x0), self.get_timesteps(x0)
        x_t, target = self.objective.training_pair(x0, self.couple(noise, x0), t, self.generator)
        keep = self._keep(x0.shape[0], x0.device) if self.condition_dropout > 0 else None
        conditions = self.conditions(batchdata, x0.device, non_blocking, keep)
        return x_t, target, (), {"timesteps": self.objective.network_time(t), **conditions}

    def conditions(self, batchdata: Mapping, device, non_blocking: bool = False, keep: torch.Tensor | None = None) -> dict:
        """The batch's ``mask`` and ``class_labels`` (where the generator takes them); where ``keep`` (B,) is False
        the condition is dropped (zero mask, null class) for classifier-free guidance."""
        conditions: dict[str, torch.Tensor] = {}
        if self.mask_key is not None:
            mask = plain_tensor(batchdata[self.mask_key], device, non_blocking)
            conditions["mask"] = mask if keep is None else mask * keep.view(-1, 1, 1, 1)
        if self.class_key is not None:
            labels = torch.as_tensor(batchdata[self.class_key]).to(device=device).long().view(-1)
            if keep is not None:
                labels = torch.where(keep, labels, torch.full_like(labels, self.null_class))
            conditions["class_labels"] = labels
        return conditions
