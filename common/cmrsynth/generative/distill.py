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
"""Few-step students by reflow: a student learns the teacher's own noise -> sample map.

The teacher's deterministic sampler (DDIM, or an ODE solver on a flow) couples each starting noise z with one
sample x. A student initialised from the teacher is trained with the teacher's own objective on those couplings
instead of on independent (noise, data) draws: x_t = alpha_t x + sigma_t z with the z that x came from. Once the
coupling is learnt, every point of the student's path lies on the segment between z and x, so a deterministic
step (DDIM, or Euler on a straight flow) lands on the teacher's sample from any time: one or two evaluations
replace fifty. For a flow-matching teacher this is 2-rectified flow (Liu et al., ICLR 2023); for a DDPM teacher
it is the same rectification on the teacher's variance-preserving path, as InstaFlow does for Stable Diffusion
(Liu et al., ICLR 2024). The student keeps the teacher's objective, codec, conditioning and card, so it loads in
the bundle's own inference config; guidance the teacher sampled with is folded into its couplings.

Chosen over consistency distillation and progressive distillation for the CPU budget: the teacher runs once
per coupling, before training (consistency distillation evaluates the teacher at every training step, progressive
distillation needs log2(50) rounds of training), and no perceptual metric network is needed (none can be
downloaded here).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cmrsynth.data.atomic import save_torch_atomic
from cmrsynth.errors import CMRDataError
from cmrsynth.generative.generator import Generator
from cmrsynth.generative.training import ObjectivePrepareBatch, plain_tensor

#: samplers whose noise -> sample map is deterministic (a coupling a student can learn)
DETERMINISTIC_SAMPLERS = ("ddim", "euler", "midpoint", "heun", "rk4", "dopri5")


def _conditions(source, count: int, mask_key: str | None, class_key: str | None) -> tuple[list, list]:
    """Masks (integer label maps) and classes of ``count`` items of ``source``, cycling through it."""
    masks, classes = [], []
    for i in range(count):
        item = source[i % len(source)]
        if mask_key is not None:  # one-hot (C, H, W), as the bundles' training transforms give it
            masks.append(plain_tensor(item[mask_key]).argmax(0).to(torch.uint8))
        if class_key is not None:
            classes.append(int(plain_tensor(item[class_key]).reshape(-1)[0]))
    return masks, classes


@torch.no_grad()
def teacher_pairs(generator: Generator, teacher: str | Path, path: str | Path, source=None, num_pairs: int = 2048,
                  mask_key: str | None = None, class_key: str | None = None, sampler: str | None = None,
                  num_inference_steps: int | None = 50, batch_size: int = 32, seed: int = 0, mask_channels: int = 4,
                  save_every: int = 8) -> Path:
    """Draw ``num_pairs`` (noise, sample) couplings from the teacher's deterministic sampler and write them to ``path``.

    The teacher is the generator's architecture with the weights of ``teacher`` (a ``best_ema.pt`` or training
    checkpoint); the generator itself is left untouched. Conditions (masks, classes) cycle through ``source``, a
    dataset of training items (the data the teacher learnt from; nothing new is read). A finished file is kept; an
    unfinished one (``<path>.partial``, written every ``save_every`` batches with the random state) is continued, so
    a rerun after a crash loses at most those batches.

    Returns:
        ``path``: a torch file with ``noise`` and ``sample`` (float16, the objective's space), ``mask`` (uint8 label
        maps) or ``class`` where the generator is conditioned on them, and the sampler settings used.
    """
    path = Path(path)
    if path.is_file():
        return path
    sampler = sampler or generator.sampler
    if sampler not in DETERMINISTIC_SAMPLERS:
        raise ValueError(f"reflow needs a deterministic teacher sampler, got {sampler!r}; allowed: {list(DETERMINISTIC_SAMPLERS)}")
    if source is None or len(source) == 0:
        raise CMRDataError(path, "no training items to draw the teacher's conditions from")
    model = copy.deepcopy(generator).load_checkpoint(teacher).eval()
    masks, classes = _conditions(source, num_pairs, mask_key, class_key)
    partial = path.with_name(path.name + ".partial")
    done = torch.load(partial, weights_only=True) if partial.is_file() else {"noise": [], "sample": [], "rng": None, "nfe": 0}
    rng = torch.Generator().manual_seed(seed)
    if done["rng"] is not None:
        rng.set_state(done["rng"])
    for batch, start in enumerate(range(len(torch.cat(done["noise"])) if done["noise"] else 0, num_pairs, batch_size)):
        stop = min(start + batch_size, num_pairs)
        mask = (F.one_hot(torch.stack(masks[start:stop]).long(), mask_channels).permute(0, 3, 1, 2).float().to(model.device)
                if masks else None)
        labels = torch.tensor(classes[start:stop], device=model.device) if classes else None
        z, x, done["nfe"] = model.sample_latent(stop - start, mask=mask, class_labels=labels, sampler=sampler,
                                                num_inference_steps=num_inference_steps, generator=rng)
        done["noise"].append(z.half().cpu())
        done["sample"].append(x.half().cpu())
        if (batch + 1) % save_every == 0 and stop < num_pairs:
            save_torch_atomic({**done, "rng": rng.get_state()}, partial)
        logging.getLogger(__name__).info(f"teacher couplings: {stop}/{num_pairs}")
    pairs = {"noise": torch.cat(done["noise"]), "sample": torch.cat(done["sample"]),
             "sampler": {**model.settings(sampler, num_inference_steps), "nfe": done["nfe"], "teacher": str(teacher)}}
    if masks:
        pairs["mask"] = torch.stack(masks)
    if classes:
        pairs["class"] = torch.tensor(classes)
    save_torch_atomic(pairs, path)
    partial.unlink(missing_ok=True)
    return path


class TeacherPairs(Dataset):
    """The couplings of ``teacher_pairs`` as training items: ``noise``, ``sample``, and ``label`` (one-hot mask) and
    ``class`` where present. The last ``validation_share`` of the pairs are the validation part.

    Args:
        path: the couplings file.
        part: ``training`` or ``validation``.
        validation_share: share of the pairs held out for validation (the choice of ``best_ema.pt``).
        mask_channels: one-hot channels of a mask.
    """

    def __init__(self, path: str | Path, part: str = "training", validation_share: float = 0.1, mask_channels: int = 4):
        if part not in ("training", "validation"):
            raise ValueError(f"part must be 'training' or 'validation', got {part!r}")
        self.pairs = torch.load(path, map_location="cpu", weights_only=True)
        n = len(self.pairs["noise"])
        cut = n - max(1, round(n * validation_share))
        self.indices = range(cut) if part == "training" else range(cut, n)
        self.mask_channels = mask_channels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        item = {"noise": self.pairs["noise"][j].float(), "sample": self.pairs["sample"][j].float()}
        if "mask" in self.pairs:
            item["label"] = F.one_hot(self.pairs["mask"][j].long(), self.mask_channels).permute(2, 0, 1).float()
        if "class" in self.pairs:
            item["class"] = self.pairs["class"][j]
        return item


class CoupledPrepareBatch(ObjectivePrepareBatch):
    """Training batches of a reflow student: each sample (already in the objective's space) is noised with the
    noise the teacher drew it from, never re-paired.

    A few-step sampler evaluates the student only at a few noise levels (1 step: level 1, pure noise; 2 trailing
    steps: levels 1 and 0.5), so a share of each batch is trained exactly there and the rest at the objective's
    usual times, which keep the whole path (and longer samplers) intact.

    Args:
        noise_key: batch key of the teacher noise.
        focus_levels: noise levels (0 clean, 1 pure noise) the student's sampler evaluates.
        focus_share: share of samples trained at one of ``focus_levels`` (0: the objective's times only).
        other arguments: as ``ObjectivePrepareBatch`` (no codec: the couplings are stored encoded).
    """

    def __init__(self, *args, noise_key: str = "noise", focus_levels: tuple[float, ...] = (1.0, 0.5),
                 focus_share: float = 0.5, **kwargs):
        if not 0.0 <= focus_share <= 1.0:
            raise ValueError(f"focus_share must be in [0, 1], got {focus_share}")
        super().__init__(*args, **kwargs)
        self.noise_key, self._noise = noise_key, None
        self.focus_levels, self.focus_share = tuple(focus_levels), float(focus_share)

    def get_noise(self, x0: torch.Tensor) -> torch.Tensor:
        """The batch's own teacher noise."""
        return self._noise

    def get_timesteps(self, x0: torch.Tensor) -> torch.Tensor:
        """The objective's times, a ``focus_share`` of them moved to one of ``focus_levels``."""
        t = super().get_timesteps(x0)
        if not self.focus_levels or self.focus_share == 0:
            return t
        n = x0.shape[0]
        focused = torch.rand(n, generator=self.generator) < self.focus_share
        which = torch.randint(len(self.focus_levels), (n,), generator=self.generator)
        levels = torch.cat([self.objective.time_at_level(level, 1) for level in self.focus_levels])
        return torch.where(focused.to(t.device), levels[which].to(t), t)

    def couple(self, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Keep the teacher's coupling (an exact-OT objective would re-pair it)."""
        return noise

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        self._noise = plain_tensor(batchdata[self.noise_key], device, non_blocking)
        return super().__call__(batchdata, device, non_blocking, **kwargs)
