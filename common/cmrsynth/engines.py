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
"""Ignite handlers shared by every trainer: EMA, validation at the end, time budget, resumable checkpoints.

What a generator is (objectives, conditioning, samplers) lives in ``cmrsynth.generative``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from cmrsynth.errors import CMRDataError

#: crash-test hook (tests/integration/test_crash_resume.py): ``save:N`` SIGKILLs this process inside its N-th checkpoint
#: write, after half the bytes reached the temporary file; ``iteration:N`` SIGKILLs it when global iteration N ends.
#: Unset in normal runs; it exists so that the tests can kill a real run at a chosen point, torn write included.
CRASH_ENV = "CMRSYNTH_CRASH_AT"
_saves_in_this_process = 0


class EMAUpdater:
    """Update an exponential moving average of the network after every training iteration.

    Kept instead of ignite's ``EMAHandler``: the bundles' EMA is a ``torch.optim.swa_utils.AveragedModel`` (its
    state is what checkpoints, the DP-SGD overlay and ``Generator`` load), and EMAHandler's momentum warm-up would
    change every committed benchmark number.

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

        self.stopped = False
        engine.add_event_handler(Events.TERMINATE, lambda _: setattr(self, "stopped", True))
        engine.add_event_handler(Events.COMPLETED, self._maybe_validate)

    def _maybe_validate(self, engine) -> None:
        # a stop (terminate) on the last iteration of a validation epoch skips that EPOCH_COMPLETED, and with it
        # the ValidationHandler: validate then too, not only between validation epochs
        between = engine.state.iteration % (engine.state.epoch_length * self.interval) != 0
        if between or self.stopped:
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
        # not ignite's TimeLimit: it stops each rank on its own clock, and under DDP a rank that stops first
        # leaves the others waiting forever in the next all-reduce; here every rank stops at the same iteration
        if _distributed():
            torch.distributed.all_reduce(spent, op=torch.distributed.ReduceOp.MAX)
        if spent.item():
            engine.logger.info(f"time budget of {self.minutes} min reached at iteration {engine.state.iteration}")
            engine.terminate()


class EngineProgress:
    """An engine's own progress (iteration, epoch length, run length) as a checkpoint entry.

    ``Engine.state_dict`` also returns the live objects named in its user keys (``AdversarialTrainer`` lists its
    networks and optimizers); saved there and loaded back, they would replace the engine's objects with copies that
    no other handler (EMA, checkpoint) sees. Those objects are checkpointed through ``save_dict`` instead.
    """

    def __init__(self, engine):
        self.engine = engine

    def state_dict(self) -> dict:
        """The engine's state without its user keys."""
        user = set(self.engine._state_dict_user_keys)
        return {k: v for k, v in self.engine.state_dict().items() if k not in user}

    def load_state_dict(self, state: dict) -> None:
        """Restore progress; user keys keep the engine's live objects."""
        live = {k: getattr(self.engine.state, k) for k in self.engine._state_dict_user_keys}
        self.engine.load_state_dict({**state, **live})


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _is_rank0() -> bool:
    return not _distributed() or torch.distributed.get_rank() == 0


def _crash_point(kind: str) -> int | None:
    value = os.environ.get(CRASH_ENV, "")
    return int(value.split(":")[1]) if value.startswith(f"{kind}:") else None


def checkpoints_newest_first(folder: str | Path, prefix: str = "checkpoint") -> list[Path]:
    """The ``<prefix>*.pt`` files in ``folder``, newest first (by modification time, ns)."""
    folder = Path(folder)
    files = list(folder.glob(f"{prefix}*.pt")) if folder.is_dir() else []
    return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def latest_checkpoint(folder: str | Path, prefix: str = "checkpoint") -> str | None:
    """The newest ``<prefix>*.pt`` file in ``folder`` (by modification time), or None: the resume point."""
    files = checkpoints_newest_first(folder, prefix)
    return str(files[0]) if files else None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only, never arbitrary objects).

    Raises:
        CMRDataError: a torn, corrupt or non-checkpoint file, naming it.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torn zip, bad pickle, or objects that weights_only refuses
        raise CMRDataError(path, f"not a loadable checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not isinstance(state, dict):
        raise CMRDataError(path, f"checkpoint holds a {type(state).__name__}; expected a dict of states")
    return state


def _save_atomic(obj, path: Path) -> None:
    global _saves_in_this_process
    _saves_in_this_process += 1
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    if _crash_point("save") == _saves_in_this_process:  # crash test: a torn temporary file, then SIGKILL
        with open(tmp, "r+b") as f:
            f.truncate(os.path.getsize(tmp) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(tmp, path)


class ResumableCheckpoint:
    """Checkpoint a training run every epoch and resume it from the newest checkpoint when it starts again.

    Saves ``save_dict`` plus the trainer's own state (epoch, iteration) to ``save_dir/checkpoint_epoch=N.pt``
    (keeping ``n_saved``) and, when training ends (completed or stopped by a time budget), to
    ``checkpoint_final.pt``. Files are written to a temporary name and renamed, so a crash never leaves a torn
    checkpoint. Under DDP every rank keeps the handler (it resumes every rank) but only rank 0 writes. On start, the newest checkpoint (if any) is loaded, keeping the configured ``max_epochs``, so
    rerunning the same command after a crash continues where it stopped.

    Kept instead of ignite's ``Checkpoint`` + ``DiskSaver(atomic=True)``: those save and keep files, but do not
    find and load the newest one when the same command is rerun, nor keep the configured run length on resume.

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

        self.objects = {**self.save_dict, "trainer": EngineProgress(engine)}
        engine.add_event_handler(Events.STARTED, self.resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_epoch)
        engine.add_event_handler(Events.COMPLETED, self.save_final)
        if _crash_point("iteration") is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._crash_test_kill)

    @staticmethod
    def _crash_test_kill(engine) -> None:
        if engine.state.iteration == _crash_point("iteration"):
            os.kill(os.getpid(), signal.SIGKILL)

    def _state(self) -> dict:
        return {k: v.state_dict() for k, v in self.objects.items()}

    def resume(self, engine) -> None:
        """Load the newest loadable checkpoint into every object, keeping the configured run length.

        Checkpoints load with ``weights_only=True``. A file that does not load (torn by a crash on a file system
        without atomic rename, or damaged later) is never used: the next older one is tried, with a warning.

        Raises:
            CMRDataError: checkpoints exist but none loads.
        """
        candidates = checkpoints_newest_first(self.save_dir)
        if not candidates:
            return
        state, path, refused = None, None, []
        for candidate in candidates:
            try:
                state, path = load_checkpoint(candidate), str(candidate)
                break
            except CMRDataError as exc:
                refused.append(str(exc))
                logging.getLogger(__name__).warning(f"skipping {exc}")
        if state is None:
            raise CMRDataError(self.save_dir, f"no checkpoint loads: {refused}; move them away to start over")
        max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
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


def start_from(pretrained: str | Path | None, ckpt_dir: str | Path, network: torch.nn.Module,
               ema: torch.optim.swa_utils.AveragedModel, card=None) -> str | None:
    """Initialise a training run from another run's weights (e.g. a generator pre-trained on public data before
    DP-SGD fine-tuning on the private cohort): the pretrained EMA weights go into both the network and its EMA.

    Does nothing when ``pretrained`` is None, or when ``ckpt_dir`` already holds a checkpoint of this run (a
    resumed run continues from its own state, never from the pretrained one again).

    Args:
        pretrained: a training checkpoint or ``best_ema.pt`` holding an ``ema`` entry.
        ckpt_dir: this run's checkpoint folder.
        network, ema: this run's network and its EMA (``AveragedModel``).
        card: this run's ``GeneratorCard``: a checkpoint of another kind of generator is refused, naming the file.

    Returns:
        the path loaded, or None.
    """
    from cmrsynth.generative.codecs import load_module_weights

    if pretrained is None or latest_checkpoint(ckpt_dir) is not None:
        return None
    state = load_checkpoint(pretrained)
    if card is not None and "card" in state:
        card.check(state["card"], Path(pretrained))
    # a best_ema.pt written before cards holds the EMA's weights alone
    load_module_weights(ema, state.get("ema", state), pretrained, "the EMA of the network")
    load_module_weights(network, ema.module.state_dict(), pretrained, "the network")
    return str(pretrained)
