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
"""Differentially private training (DP-SGD with Opacus) for any bundle built on a stock SupervisedTrainer.

``DPTraining`` wraps the network, optimizer and loader (per-sample clipping, Gaussian noise, Poisson sampling),
and as a trainer handler reports the (epsilon, delta) spent by the accountant every epoch and stops training
before the target epsilon would be exceeded.
"""

from __future__ import annotations

import logging

import torch


def _accountant(history, kind: str = "rdp"):
    """An Opacus accountant of ``kind`` holding a step history of (noise multiplier, sample rate, steps)."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(kind)
    accountant.history = [tuple(h) for h in history]
    return accountant


def budget_spent(state: dict, delta: float, accountant: str = "rdp") -> dict:
    """What a run spent, from the ``DPTraining.state_dict()`` saved in its checkpoint: epsilon at ``delta``, the
    noise multiplier and sample rate of its last steps, and the number of noisy steps."""
    spent = _accountant(state["history"], accountant)
    if not spent.history:
        raise ValueError("the DP-SGD state holds no steps")
    noise, rate, _ = spent.history[-1]
    return {"epsilon": float(spent.get_epsilon(delta)), "delta": float(delta), "noise_multiplier": float(noise),
            "sample_rate": float(rate), "steps": int(sum(h[2] for h in spent.history))}


class DPTraining:
    """DP-SGD for a bundle's trainer (Abadi et al. 2016), calibrated to a target (epsilon, delta).

    Args:
        network: the trained module (its parameters are shared with the private wrapper).
        optimizer: its optimizer.
        data_loader: the training loader (replaced by a Poisson-sampling loader of the same expected batch).
        target_epsilon: privacy budget; the noise is set so ``epochs`` passes spend it.
        delta: the delta of (epsilon, delta)-DP; at most 1 / (training samples).
        epochs: planned passes over the training set (sets the noise scale).
        max_grad_norm: per-sample gradient clipping bound.
        accountant: Opacus accountant ("rdp" or "prv").

    Raises:
        ValueError: a layer DP-SGD cannot train (e.g. BatchNorm), naming each one; or delta too large.
    """

    def __init__(self, network: torch.nn.Module, optimizer, data_loader, target_epsilon: float, delta: float,
                 epochs: int, max_grad_norm: float = 1.0, accountant: str = "rdp"):
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(network, strict=False)
        if errors:
            raise ValueError("DP-SGD cannot train this network: " + "; ".join(str(e) for e in errors)
                             + " (replace these layers, e.g. BatchNorm with GroupNorm)")
        n = len(data_loader.dataset)
        if not 0 < delta <= 1.0 / n:
            raise ValueError(f"delta must be in (0, 1/{n}] for {n} training samples, got {delta}")
        self.target_epsilon, self.delta = float(target_epsilon), float(delta)
        self.accountant_kind = accountant
        self.engine = PrivacyEngine(accountant=accountant)
        self.network, self.optimizer, self.data_loader = self.engine.make_private_with_epsilon(
            module=network, optimizer=optimizer, data_loader=data_loader, target_epsilon=target_epsilon,
            target_delta=delta, epochs=epochs, max_grad_norm=max_grad_norm)
        self.noise_multiplier = float(self.optimizer.noise_multiplier)

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (0 before the first step)."""
        return float(self.engine.get_epsilon(self.delta)) if self.engine.accountant.history else 0.0

    def state_dict(self) -> dict:
        """The accountant's history, saved with the checkpoint so a resumed run keeps counting."""
        return {"history": list(self.engine.accountant.history)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the accountant's history from a checkpoint."""
        self.engine.accountant.history = [tuple(h) for h in state["history"]]

    def attach(self, engine) -> None:
        """Report epsilon every epoch (in ``engine.state.metrics["dp_epsilon"]``) and stop at the budget."""
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._report)

    def _epsilon_after_next_step(self) -> float:
        accountant = self.engine.accountant
        if not accountant.history:
            return 0.0
        *earlier, (noise, rate, steps) = accountant.history
        return float(_accountant([*earlier, (noise, rate, steps + 1)], self.accountant_kind).get_epsilon(self.delta))

    def _check(self, engine) -> None:
        # stop before the step that would overspend: the budget is never exceeded
        if self._epsilon_after_next_step() > self.target_epsilon:
            logging.getLogger(__name__).info(f"privacy budget epsilon={self.target_epsilon} reached; stopping")
            engine.terminate()

    def _report(self, engine) -> None:
        eps = self.epsilon()
        engine.state.metrics["dp_epsilon"] = eps
        engine.state.metrics["dp_noise_multiplier"] = self.noise_multiplier
        logging.getLogger(__name__).info(f"DP-SGD: epsilon={eps:.3f} at delta={self.delta:g} "
                                         f"(noise multiplier {self.noise_multiplier:.3f})")
