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

The pipeline's students, for the CPU budget: the teacher runs once per coupling, before training (consistency
distillation, ``generative.consistency``, evaluates the teacher at every training step; progressive distillation
needs log2(50) rounds of training), and no perceptual metric network is needed (none can be downloaded here). The
two have not yet been compared by measurement.
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


def _conditions(source, count: int, mask_key: str | None, class_key: str | None, seed: int) -> tuple[list, list]:
    """Masks (integer label maps) and classes of ``count`` items of ``source``: every item in turn, in an order
    shuffled with ``seed`` (a datalist is stored patient by patient)."""
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    masks, classes = [], []
    for i in range(count):
        item = source[int(order[i % len(source)])]
        if mask_key is not None:  # one-hot (C, H, W), as the bundles' training transforms give it
            masks.append(plain_tensor(item[mask_key]).argmax(0).to(torch.uint8))
        if class_key is not None:
            classes.append(int(plain_tensor(item[class_key]).reshape(-1)[0]))
    return masks, classes


def _check_settings(path: Path, recorded: dict, settings: dict) -> None:
    differ = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if differ:
        listed = ", ".join(f"{k}: {a!r} in the file, {b!r} now" for k, (a, b) in differ.items())
        raise CMRDataError(path, f"couplings were drawn with other settings ({listed}); use the same settings or delete the file")


def load_teacher(generator: Generator, path: str | Path) -> Generator:
    """A frozen copy of ``generator`` holding the weights of ``path`` (a ``best_ema.pt`` or training checkpoint; its
    card is checked); the generator itself is left untouched."""
    teacher = copy.deepcopy(generator).load_checkpoint(path).eval()
    teacher.network.requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_pairs(generator: Generator, teacher: str | Path, path: str | Path, source=None, num_pairs: int = 2048,
                  mask_key: str | None = None, class_key: str | None = None, sampler: str | None = None,
                  num_inference_steps: int | None = 50, batch_size: int = 32, seed: int = 0, mask_channels: int = 4,
                  validation_source=None, validation_pairs: int = 0, save_every: int = 8) -> Path:
    """Draw (noise, sample) couplings from the teacher's deterministic sampler and write them to ``path``.

    The teacher is the generator's architecture with the weights of ``teacher`` (a ``best_ema.pt`` or training
    checkpoint); the generator itself is left untouched. ``num_pairs`` couplings take their conditions (masks,
    classes) from ``source``, the training items (the data the teacher learnt from), and ``validation_pairs`` more
    from ``validation_source``, the validation patients' items, so the student's checkpoint is chosen on conditions it
    never trained on. A finished file is kept when its settings match, refused (one line) when they do not; an
    unfinished one (``<path>.partial``, written every ``save_every`` batches with the random state) is continued, so a
    rerun after a crash loses at most those batches.

    Returns:
        ``path``: a torch file with ``noise`` and ``sample`` (float16, the objective's space), ``mask`` (uint8 label
        maps) or ``class`` where the generator is conditioned on them, ``validation_start`` (the first validation
        coupling) and the settings used. The masks are training patients' masks: the file is private, never released.
    """
    path = Path(path)
    sampler = sampler or generator.sampler
    settings = {"teacher": Path(teacher).name, "num_pairs": num_pairs, "validation_pairs": validation_pairs, "sampler": sampler,
                "num_inference_steps": num_inference_steps, "seed": seed}
    if path.is_file():
        _check_settings(path, torch.load(path, weights_only=True).get("settings", {}), settings)
        return path
    if sampler not in DETERMINISTIC_SAMPLERS:
        raise ValueError(f"reflow needs a deterministic teacher sampler, got {sampler!r}; allowed: {list(DETERMINISTIC_SAMPLERS)}")
    if source is None or len(source) == 0 or (validation_pairs and not validation_source):
        raise CMRDataError(path, "no training (or validation) items to draw the teacher's conditions from")
    model = load_teacher(generator, teacher)
    masks, classes = _conditions(source, num_pairs, mask_key, class_key, seed)
    if validation_pairs:
        more = _conditions(validation_source, validation_pairs, mask_key, class_key, seed)
        masks, classes = masks + more[0], classes + more[1]
    total = num_pairs + validation_pairs
    partial = path.with_name(path.name + ".partial")
    done = {"noise": [], "sample": [], "rng": None, "nfe": 0, "settings": settings}
    if partial.is_file():
        done = torch.load(partial, weights_only=True)
        _check_settings(partial, done["settings"], settings)
    rng = torch.Generator().manual_seed(seed)
    if done["rng"] is not None:
        rng.set_state(done["rng"])
    first = sum(len(z) for z in done["noise"])
    for batch, start in enumerate(range(first, total, batch_size)):
        stop = min(start + batch_size, total)
        mask = (F.one_hot(torch.stack(masks[start:stop]).long(), mask_channels).permute(0, 3, 1, 2).float().to(model.device)
                if masks else None)
        labels = torch.tensor(classes[start:stop], device=model.device) if classes else None
        z, x, done["nfe"] = model.sample_latent(stop - start, mask=mask, class_labels=labels, sampler=sampler,
                                                num_inference_steps=num_inference_steps, generator=rng)
        done["noise"].append(z.half().cpu())
        done["sample"].append(x.half().cpu())
        if (batch + 1) % save_every == 0 and stop < total:
            save_torch_atomic({**done, "rng": rng.get_state()}, partial)
        logging.getLogger(__name__).info(f"teacher couplings: {stop}/{total}")
    pairs = {"noise": torch.cat(done["noise"]), "sample": torch.cat(done["sample"]), "settings": settings,
             "validation_start": num_pairs if validation_pairs else None,
             "sampler": {**model.settings(sampler, num_inference_steps), "nfe": done["nfe"]}}
    if masks:
        pairs["mask"] = torch.stack(masks)
    if classes:
        pairs["class"] = torch.tensor(classes)
    save_torch_atomic(pairs, path)
    partial.unlink(missing_ok=True)
    return path


class TeacherPairs(Dataset):
    """The couplings of ``teacher_pairs`` as training items: ``noise``, ``sample``, and ``label`` (one-hot mask) and
    ``class`` where present. The validation part is the couplings drawn on validation conditions; a file without
    them holds out its last ``validation_share``.

    Args:
        path: the couplings file.
        part: ``training`` or ``validation``.
        validation_share: share held out when the file has no validation couplings.
        mask_channels: one-hot channels of a mask.
    """

    def __init__(self, path: str | Path, part: str = "training", validation_share: float = 0.1, mask_channels: int = 4):
        if part not in ("training", "validation"):
            raise ValueError(f"part must be 'training' or 'validation', got {part!r}")
        self.pairs = torch.load(path, map_location="cpu", weights_only=True)
        n = len(self.pairs["noise"])
        cut = self.pairs.get("validation_start") or n - max(1, round(n * validation_share))
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

    A few-step sampler evaluates the student at a few times only (1 step: pure noise; 2 steps: also half way, on the
    trailing grid of a DDPM objective), so a share of each batch is trained exactly there and the rest at the
    objective's usual times, which keep the whole path (and longer samplers) intact. Students are sampled without
    guidance: guidance the teacher sampled with is in its couplings.

    Args:
        noise_key: batch key of the teacher noise.
        focus_steps: step counts whose sampling times are trained on (``Objective.time_grid(n, spacing="trailing")``).
        focus_share: share of samples trained at those times (0: the objective's times only).
        other arguments: as ``ObjectivePrepareBatch`` (no codec: the couplings are stored encoded).
    """

    def __init__(self, *args, noise_key: str = "noise", focus_steps: tuple[int, ...] = (1, 2), focus_share: float = 0.5,
                 **kwargs):
        if not 0.0 <= focus_share <= 1.0:
            raise ValueError(f"focus_share must be in [0, 1], got {focus_share}")
        super().__init__(*args, **kwargs)
        self.noise_key, self._noise, self.focus_share = noise_key, None, float(focus_share)
        grids = [self.objective.time_grid(n, spacing="trailing")[:-1] for n in focus_steps]
        self.focus_times = torch.unique(torch.cat(grids)) if grids else None

    def get_noise(self, x0: torch.Tensor) -> torch.Tensor:
        """The batch's own teacher noise."""
        return self._noise

    def get_timesteps(self, x0: torch.Tensor) -> torch.Tensor:
        """The objective's times, a ``focus_share`` of them moved to one of the focus times."""
        t = super().get_timesteps(x0)
        if self.focus_times is None or self.focus_share == 0:
            return t
        n = x0.shape[0]
        focused = torch.rand(n, generator=self.generator) < self.focus_share
        which = torch.randint(len(self.focus_times), (n,), generator=self.generator)
        return torch.where(focused.to(t.device), self.focus_times[which].to(t), t)

    def couple(self, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Keep the teacher's coupling (an exact-OT objective would re-pair it)."""
        return noise

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        self._noise = plain_tensor(batchdata[self.noise_key], device, non_blocking)
        return super().__call__(batchdata, device, non_blocking, **kwargs)
