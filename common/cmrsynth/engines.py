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
"""Training and sampling pieces for the diffusion bundles, driven by MONAI's stock SupervisedTrainer.

- ``DenoisingPrepareBatch`` turns a batch of clean images x0 into the noisy input x_t, the target and the
  conditions, so a plain ``SimpleInferer`` calls ``network(x_t, timesteps=..., mask=..., class_labels=...)``.
- ``ConditionalDenoiser`` wraps a MONAI ``DiffusionModelUNet`` (mask concatenated to the input) or a
  ``SPADEDiffusionModelUNet`` (mask through SPADE normalisation), with an optional class embedding.
- ``sample_diffusion`` runs any MONAI scheduler (DDPM, DDIM) with classifier-free guidance.

Time convention (DDPM, Ho et al. 2020): integer t in [0, T), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and
the network predicts eps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch
from monai.networks.nets import SPADEDiffusionModelUNet


class ConditionalDenoiser(nn.Module):
    """A diffusion UNet with mask and class conditioning behind one signature.

    Args:
        network: a ``DiffusionModelUNet`` (its in_channels = image channels + mask channels when
            ``mask_mode="concat"``) or a ``SPADEDiffusionModelUNet`` (``mask_mode="spade"``).
        mask_mode: ``"concat"``, ``"spade"`` or ``"none"`` (unconditional on masks, e.g. the mask generator).
    """

    MASK_MODES = ("concat", "spade", "none")

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
        """Predict the model output for x_t (B, C, H, W) at integer timesteps (B,); mask is one-hot (B, 4, H, W)."""
        if self.mask_mode != "none" and mask is None:
            raise ValueError(f"mask_mode {self.mask_mode!r} needs a mask")
        if self.mask_mode == "concat":
            return self.network(torch.cat([x, mask], dim=1), timesteps, class_labels=class_labels)
        if self.mask_mode == "spade":
            return self.network(x, timesteps, seg=mask, class_labels=class_labels)
        return self.network(x, timesteps, class_labels=class_labels)


PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def plain_tensor(x, device=None, non_blocking: bool = False) -> torch.Tensor:
    """A float ``torch.Tensor`` on ``device``, stripped of MONAI metadata.

    A MetaTensor fed to a network routes every operation through ``__torch_function__`` to carry metadata that
    means nothing to a denoiser.
    """
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return torch.as_tensor(x).to(device=device, non_blocking=non_blocking).float()


class DenoisingPrepareBatch(PrepareBatch):
    """Prepare a DDPM training batch: x_t, the regression target, timesteps and (dropped-out) conditions.

    Classifier-free guidance (Ho & Salimans 2022) trains one network for both the conditional and the
    unconditional case: with probability ``condition_dropout`` a sample's class becomes ``null_class`` and its
    mask becomes all zeros.

    Args:
        scheduler: a MONAI scheduler with ``add_noise`` and ``num_train_timesteps``.
        image_key: batch key of x0, (B, C, H, W) in [-1, 1].
        mask_key: batch key of the one-hot conditioning mask, or None.
        class_key: batch key of integer class labels (B,), or None.
        condition_dropout: probability of dropping a sample's conditions while training.
        null_class: class index meaning "no class" (the last embedding).
        seed: draw noise and timesteps from a generator with this seed, restarted whenever the attached
            engine starts a run, so a validation loss compares like with like; None for fresh randomness.
        prediction_type: what the network regresses, as the scheduler's ``prediction_type``: ``epsilon``
            (the noise), ``sample`` (x0) or ``v_prediction`` (v = sqrt(a) eps - sqrt(1 - a) x0).

    References:
        Ho et al., Denoising Diffusion Probabilistic Models, NeurIPS 2020, Eq. (4) and (14).
    """

    def __init__(
        self,
        scheduler,
        image_key: str = "image",
        mask_key: str | None = None,
        class_key: str | None = None,
        condition_dropout: float = 0.0,
        null_class: int | None = None,
        seed: int | None = None,
        prediction_type: str = "epsilon",
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        if condition_dropout > 0 and class_key is not None and null_class is None:
            raise ValueError("condition_dropout on classes needs null_class (the unconditional class index)")
        self.scheduler, self.image_key, self.mask_key, self.class_key = scheduler, image_key, mask_key, class_key
        self.condition_dropout, self.null_class, self.seed = condition_dropout, null_class, seed
        self.prediction_type = prediction_type
        self.generator: torch.Generator | None = None
        self.reset()

    def reset(self) -> None:
        """Restart the seeded generator (no-op without a seed)."""
        self.generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None

    def attach(self, engine) -> None:
        """Restart the generator at every run of ``engine`` (lets the object sit in a handler list)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.reset())

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        """eps ~ N(0, I), the shape of x0."""
        return torch.randn(images.shape, generator=self.generator).to(images.device)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """t ~ U{0, ..., T-1}, one per sample."""
        t = torch.randint(0, self.scheduler.num_train_timesteps, (images.shape[0],), generator=self.generator)
        return t.to(images.device)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The regression target of ``prediction_type``: eps, x0 or v."""
        if self.prediction_type == "sample":
            return images
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return noise

    def _keep(self, n: int, device) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) >= self.condition_dropout).to(device)

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        """Return (x_t, target, (), {"timesteps", "mask", "class_labels"}) for the trainer's inferer."""
        x0 = plain_tensor(batchdata[self.image_key], device, non_blocking)
        noise, timesteps = self.get_noise(x0), self.get_timesteps(x0)
        x_t = self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=timesteps)
        target = self.get_target(x0, noise, timesteps)
        conditions: dict[str, torch.Tensor] = {"timesteps": timesteps}
        keep = self._keep(x0.shape[0], x0.device) if self.condition_dropout > 0 else None
        if self.mask_key is not None:
            mask = plain_tensor(batchdata[self.mask_key], device, non_blocking)
            conditions["mask"] = mask if keep is None else mask * keep.view(-1, 1, 1, 1)
        if self.class_key is not None:
            labels = torch.as_tensor(batchdata[self.class_key]).to(device=x0.device).long().view(-1)
            if keep is not None:
                labels = torch.where(keep, labels, torch.full_like(labels, self.null_class))
            conditions["class_labels"] = labels
        return x_t, target, (), conditions


def guided_output(
    denoiser: Callable,
    x: torch.Tensor,
    t: torch.Tensor,
    mask: torch.Tensor | None,
    class_labels: torch.Tensor | None,
    guidance_scale: float,
    null_class: int | None,
) -> torch.Tensor:
    """Classifier-free guidance: out = out_uncond + w (out_cond - out_uncond); w = 1 is plain conditioning.

    The unconditional branch uses ``null_class`` for classes and an all-zero mask (as in training dropout).
    """
    cond = denoiser(x, t, mask=mask, class_labels=class_labels)
    if guidance_scale == 1.0:
        return cond
    null_labels = None if class_labels is None else torch.full_like(class_labels, null_class)
    null_mask = None if mask is None else torch.zeros_like(mask)
    uncond = denoiser(x, t, mask=null_mask, class_labels=null_labels)
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def sample_diffusion(
    denoiser: Callable,
    scheduler,
    noise: torch.Tensor,
    num_inference_steps: int | None = None,
    mask: torch.Tensor | None = None,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    null_class: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the reverse process of any MONAI scheduler (DDPM ancestral, DDIM) from x_T = noise to x_0.

    Args:
        denoiser: ``denoiser(x_t, t, mask=..., class_labels=...)`` -> model output, e.g. ConditionalDenoiser.
        scheduler: a MONAI scheduler (``DDPMScheduler``, ``DDIMScheduler``); its ``set_timesteps`` is called.
        noise: x_T, (B, C, H, W).
        num_inference_steps: reverse steps (default: the training steps, i.e. full DDPM).
        mask: one-hot conditioning masks (B, 4, H, W), or None.
        class_labels: (B,) integer classes, or None.
        guidance_scale: classifier-free guidance weight w (1 = none).
        null_class: the unconditional class index (needed when guidance_scale != 1 and classes are given).
        generator: random generator of the stochastic steps (DDPM).
        callback: called as callback(step_index, x) after every step.

    Returns:
        x_0, (B, C, H, W).
    """
    if guidance_scale != 1.0 and class_labels is not None and null_class is None:
        raise ValueError("classifier-free guidance on classes needs null_class")
    scheduler.set_timesteps(num_inference_steps or scheduler.num_train_timesteps, device=noise.device)
    x = noise
    for i, t in enumerate(scheduler.timesteps):
        t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        out = guided_output(denoiser, x, t_batch, mask, class_labels, guidance_scale, null_class)
        x, _ = scheduler.step(out, int(t), x, generator=generator)
        if callback is not None:
            callback(i, x)
    return x


class EMAUpdater:
    """Update an exponential moving average of the network after every training iteration.

    Args:
        ema: a ``torch.optim.swa_utils.AveragedModel`` built with an EMA ``multi_avg_fn``.
        network: the trained network.
    """

    def __init__(self, ema: torch.optim.swa_utils.AveragedModel, network: nn.Module):
        self.ema, self.network = ema, network

    def attach(self, engine) -> None:
        """Register the update on ITERATION_COMPLETED."""
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: self.ema.update_parameters(self.network))


class ValidateAtEnd:
    """Validate once more when training ends between validation epochs (e.g. stopped by ``TimeBudget``).

    Without it a run that stops before its first validation leaves no best model behind.

    Args:
        validator: the evaluator the ``ValidationHandler`` runs.
        interval: that handler's epoch interval.
    """

    def __init__(self, validator, interval: int = 1):
        self.validator, self.interval = validator, interval

    def attach(self, engine) -> None:
        """Register the check on COMPLETED (ignite fires it after a terminate too)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self._maybe_validate)

    def _maybe_validate(self, engine) -> None:
        if engine.state.iteration % (engine.state.epoch_length * self.interval) != 0:
            self.validator.run(engine.state.epoch)


class TimeBudget:
    """Stop training cleanly once ``minutes`` of wall time have passed in this process (None: no limit)."""

    def __init__(self, minutes: float | None):
        self.minutes = minutes
        self.start = None

    def attach(self, engine) -> None:
        """Register the clock on STARTED and the check on ITERATION_COMPLETED."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)

    def _start(self, _) -> None:
        self.start = time.monotonic()

    def _check(self, engine) -> None:
        if self.minutes is None:
            return
        spent = torch.tensor(float(time.monotonic() - self.start > self.minutes * 60))
        if _distributed():  # every rank stops at the same iteration, or the others would wait forever
            torch.distributed.all_reduce(spent, op=torch.distributed.ReduceOp.MAX)
        if spent.item():
            engine.logger.info(f"time budget of {self.minutes} min reached at iteration {engine.state.iteration}")
            engine.terminate()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _is_rank0() -> bool:
    return not _distributed() or torch.distributed.get_rank() == 0


def latest_checkpoint(folder: str | Path, prefix: str = "checkpoint") -> str | None:
    """The newest ``<prefix>*.pt`` file in ``folder`` (by modification time), or None: the resume point."""
    folder = Path(folder)
    files = sorted(folder.glob(f"{prefix}*.pt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return str(files[-1]) if files else None


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class ResumableCheckpoint:
    """Checkpoint a training run every epoch and resume it from the newest checkpoint when it starts again.

    Saves ``save_dict`` plus the trainer's own state (epoch, iteration) to ``save_dir/checkpoint_epoch=N.pt``
    (keeping ``n_saved``) and, when training ends (completed or stopped by a time budget), to
    ``checkpoint_final.pt``. Files are written to a temporary name and renamed, so a crash never leaves a torn
    checkpoint. Under DDP every rank keeps the handler (it resumes every rank) but only rank 0 writes. On start, the newest checkpoint (if any) is loaded, keeping the configured ``max_epochs``, so
    rerunning the same command after a crash continues where it stopped.

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, EMA, optimizer, ...).
        n_saved: epoch checkpoints to keep.
    """

    def __init__(self, save_dir: str | Path, save_dict: Mapping, n_saved: int = 1):
        self.save_dir, self.save_dict, self.n_saved = Path(save_dir), dict(save_dict), n_saved

    def attach(self, engine) -> None:
        """Register resume on STARTED, saving on EPOCH_COMPLETED and COMPLETED."""
        from ignite.engine import Events

        self.objects = {**self.save_dict, "trainer": engine}
        engine.add_event_handler(Events.STARTED, self.resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_epoch)
        engine.add_event_handler(Events.COMPLETED, self.save_final)

    def _state(self) -> dict:
        return {k: v.state_dict() for k, v in self.objects.items()}

    def resume(self, engine) -> None:
        """Load the newest checkpoint into every object, keeping the configured run length."""
        path = latest_checkpoint(self.save_dir)
        if path is None:
            return
        max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
        state = torch.load(path, map_location="cpu", weights_only=False)
        missing = [k for k in self.objects if k not in state]
        if missing:
            raise ValueError(f"{path}: checkpoint lacks {missing}; it holds {sorted(state)}")
        for k, obj in self.objects.items():
            obj.load_state_dict(state[k])
        engine.state.max_epochs, engine.state.epoch_length = max_epochs, epoch_length
        engine.logger.info(f"resumed from {path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

    def save_epoch(self, engine) -> None:
        """Write ``checkpoint_epoch=N.pt`` and drop the oldest beyond ``n_saved`` (rank 0 only under DDP)."""
        if not _is_rank0():
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        _save_atomic(self._state(), self.save_dir / f"checkpoint_epoch={engine.state.epoch}.pt")
        old = sorted(self.save_dir.glob("checkpoint_epoch=*.pt"), key=lambda p: p.stat().st_mtime)[: -self.n_saved]
        for p in old:
            p.unlink()

    def save_final(self, engine) -> None:
        """Write ``checkpoint_final.pt`` (all objects and the trainer state; rank 0 only under DDP)."""
        if not _is_rank0():
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        _save_atomic(self._state(), self.save_dir / "checkpoint_final.pt")
