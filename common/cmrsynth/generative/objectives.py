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
"""Objectives: what a generator's network regresses, how a clean sample is noised, and what an output implies.

Every objective works on one path ``x_t = alpha(t) x0 + sigma(t) eps`` between clean data x0 and Gaussian noise
eps, in its own time variable t, and answers the same questions:

- ``sample_times`` / ``training_pair``: a training batch (x_t and the regression target);
- ``network_time``: what the network's time embedding receives;
- ``predict``: the (eps, x0) an output implies at x_t (what samplers and membership attacks need);
- ``alpha_sigma``, ``time_grid``, ``time_at_level``: the path, a sampling grid from noise to data, and the time
  at a noise level s in [0, 1] (0 clean, 1 pure noise), so attacks are stated once for every objective;
- ``velocity``: dx/dt for ODE samplers (continuous-time objectives only).

Naming follows DDPM: x0 is clean data, eps the noise. torchcfm names the noise x0 and the data x1; the flow-matching
objective maps between the two where it calls torchcfm.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
from monai.networks.schedulers import DDPMScheduler


def _allowed(name: str, kind: str, allowed) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; allowed: {sorted(allowed)}")


def pad_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample (B,) tensor to broadcast over x (B, C, H, W)."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


class Objective:
    """The interface every objective implements (see the module docstring). Subclasses fill in the path."""

    #: sampler names this objective can drive (checked by ``Generator.sample`` before any work).
    samplers: tuple[str, ...] = ()
    #: a short name recorded in checkpoints, so a checkpoint of another objective is refused.
    name: str = "objective"

    def describe(self) -> dict:
        """Facts that must match between a checkpoint and the generator that loads it."""
        return {"objective": self.name}

    def sample_times(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times, one per sample, drawn from ``generator``."""
        raise NotImplementedError

    def couple(self, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Pair noise with data for a training batch; the default keeps the independent draw."""
        return noise

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps."""
        alpha, sigma = self.alpha_sigma(t)
        return pad_like(alpha, x0) * x0 + pad_like(sigma, x0) * noise

    def training_pair(self, x0, noise, t, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, target) of a training batch."""
        raise NotImplementedError

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network's time embedding receives at times t."""
        return t

    def predict(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) that a network output implies at x_t, times t (B,)."""
        raise NotImplementedError

    def clip(self, x0: torch.Tensor) -> torch.Tensor:
        """The x0 estimate a sampler steps with (identity unless the objective clips it)."""
        return x0

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)) of the path, each (B,)."""
        raise NotImplementedError

    def time_grid(self, steps: int | None, device=None, spacing: str | None = None) -> torch.Tensor:
        """Times from noise to data for a sampler of ``steps`` steps (None: the objective's default); ``spacing``
        overrides a discrete objective's timestep spacing."""
        raise NotImplementedError

    def time_at_level(self, level: float, n: int, device=None) -> torch.Tensor:
        """The time at noise level ``level`` (0 clean, 1 pure noise), for n samples."""
        raise NotImplementedError

    def velocity(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """dx/dt at x_t for ODE samplers; only continuous-time objectives have one."""
        raise ValueError(f"{type(self).__name__} has no continuous time: it samples with {list(self.samplers)}")


class PredictionType(str, Enum):
    """What a diffusion network regresses (a plain string works in configs)."""

    EPSILON = "epsilon"
    SAMPLE = "sample"
    V_PREDICTION = "v_prediction"


def _from_epsilon(out, x_t, a):
    return out, (x_t - (1 - a).sqrt() * out) / a.sqrt()


def _from_sample(out, x_t, a):
    return (x_t - a.sqrt() * out) / (1 - a).sqrt(), out


def _from_velocity(out, x_t, a):
    return a.sqrt() * out + (1 - a).sqrt() * x_t, a.sqrt() * x_t - (1 - a).sqrt() * out


#: prediction type -> output, x_t, abar_t -> (eps, x0); the formulas of MONAI's DDIMScheduler.step.
IMPLIED_BY: dict[PredictionType, Callable] = {
    PredictionType.EPSILON: _from_epsilon, PredictionType.SAMPLE: _from_sample, PredictionType.V_PREDICTION: _from_velocity}


class DiffusionObjective(Objective):
    """DDPM on a MONAI scheduler: integer t in [0, T), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

    The network regresses eps, x0 or v = sqrt(abar) eps - sqrt(1 - abar) x0 (``prediction_type``). Time grids
    step from t = T - 1 to a final clean step (alpha = 1); t = -1 stands for that clean end.

    Args:
        scheduler: a MONAI ``DDPMScheduler`` (its betas, ``add_noise`` and ``get_velocity`` are used).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        clip_sample: clamp the x0 estimate to [-1, 1] while sampling (MONAI's default).
        timestep_spacing: where a sampler of n steps evaluates: ``linspace`` (T - 1 down to 0, as MONAI's
            DDIMScheduler) or ``trailing`` (T - 1, T - 1 - T/n, ...: Lin et al. 2024, Table 2). They barely differ at
            50 steps; at 2 steps linspace evaluates at t = 0, where the image is already clean, and wastes the step.

    References:
        Ho et al., Denoising Diffusion Probabilistic Models, NeurIPS 2020, Eq. (4), (7), (14).
        Salimans & Ho, Progressive Distillation for Fast Sampling of Diffusion Models, ICLR 2022 (v).
        Lin et al., Common Diffusion Noise Schedules and Sample Steps are Flawed, WACV 2024 (trailing spacing).
    """

    samplers = ("ddpm", "ddim")
    name = "ddpm"

    spacings = ("linspace", "trailing")

    def __init__(self, scheduler: DDPMScheduler, prediction_type: str = "epsilon", clip_sample: bool = True,
                 timestep_spacing: str = "linspace"):
        try:
            self.prediction_type = PredictionType(prediction_type)
        except ValueError:
            raise _allowed(prediction_type, "prediction_type", [p.value for p in PredictionType]) from None
        if timestep_spacing not in self.spacings:
            raise _allowed(timestep_spacing, "timestep_spacing", self.spacings)
        self.timestep_spacing = timestep_spacing
        self.scheduler, self.clip_sample = scheduler, clip_sample
        self.num_train_timesteps = int(scheduler.num_train_timesteps)

    def describe(self) -> dict:
        return {"objective": self.name, "prediction_type": self.prediction_type.value,
                "num_train_timesteps": self.num_train_timesteps}

    def sample_times(self, n, generator=None):
        """t ~ U{0, ..., T-1}, one per sample."""
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def add_noise(self, x0, noise, t):
        return self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)

    def training_pair(self, x0, noise, t, generator=None):
        """(x_t, target): target is eps, x0 or v by ``prediction_type``."""
        x_t = self.add_noise(x0, noise, t)
        if self.prediction_type == PredictionType.SAMPLE:
            return x_t, x0
        if self.prediction_type == PredictionType.V_PREDICTION:
            return x_t, self.scheduler.get_velocity(x0, noise, t)
        return x_t, noise

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        abar = self.scheduler.alphas_cumprod.to(t.device)[t.long().clamp(min=0)]
        return torch.where(t >= 0, abar, torch.ones_like(abar))

    def predict(self, output, x_t, t):
        return IMPLIED_BY[self.prediction_type](output, x_t, pad_like(self._abar(t), x_t))

    def clip(self, x0):
        return x0.clamp(-1, 1) if self.clip_sample else x0

    def alpha_sigma(self, t):
        abar = self._abar(t)
        return abar.sqrt(), (1 - abar).sqrt()

    def time_grid(self, steps, device=None, spacing=None):
        """``steps`` timesteps from T - 1 down, spaced by ``spacing`` or ``timestep_spacing`` (rounded), then -1 (clean).

        Each step goes from one grid time to the next. (MONAI's DDIMScheduler instead steps to t - T // steps
        while evaluating the next call at the rounded grid time, up to one timestep apart.)
        """
        T = self.num_train_timesteps
        steps = T if steps is None else int(steps)
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in [1, {T}] for this objective, got {steps}")
        if (spacing or self.timestep_spacing) == "trailing":
            grid = (T - torch.arange(steps) * (T / steps)).round().long() - 1
        else:
            grid = torch.linspace(T - 1, 0, steps).round().long()
        return torch.cat([grid, torch.tensor([-1])]).to(device)

    def time_at_level(self, level, n, device=None):
        """t = round(level * T), kept inside [0, T - 1]."""
        t = min(max(round(float(level) * self.num_train_timesteps), 0), self.num_train_timesteps - 1)
        return torch.full((n,), t, dtype=torch.long, device=device)


class Coupling(str, Enum):
    """How a flow-matching batch pairs noise with data."""

    INDEPENDENT = "independent"
    EXACT_OT = "exact_ot"


class FlowMatchingObjective(Objective):
    """Conditional flow matching (Lipman et al. 2023; Tong et al. 2024) through torchcfm.

    Time t in [0, 1] runs from noise (t = 0) to data (t = 1): x_t = t x0 + (1 - t) eps (+ sigma noise while
    training), and the network regresses u_t = x0 - eps (torchcfm: x1 - x0, Eq. (15) of Tong et al.). The
    network's time embedding receives ``(1 - t) * time_scale``, so large values mean noisy inputs as in the DDPM
    bundles (MONAI's RFlowScheduler uses the same 0..1000 scale).

    Args:
        sigma: torchcfm's sigma, the width of the Gaussian path around the straight line (0: rectified flow).
        coupling: ``independent`` (I-CFM) or ``exact_ot`` (OT-CFM: each batch's noise is re-paired to its data by
            an exact optimal-transport plan; masks stay with their images because only the noise moves).
        time_scale: the network time of pure noise.

    References:
        Lipman et al., Flow Matching for Generative Modeling, ICLR 2023.
        Tong et al., Improving and generalizing flow-based generative models with minibatch optimal transport,
        TMLR 2024, Eq. (15)-(17).
    """

    samplers = ("euler", "midpoint", "heun", "rk4", "dopri5", "ddim", "ddpm")
    name = "flow_matching"

    def __init__(self, sigma: float = 0.0, coupling: str = "independent", time_scale: float = 1000.0):
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher

        try:
            self.coupling = Coupling(coupling)
        except ValueError:
            raise _allowed(coupling, "coupling", [c.value for c in Coupling]) from None
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        matcher = ExactOptimalTransportConditionalFlowMatcher if self.coupling == Coupling.EXACT_OT else ConditionalFlowMatcher
        self.matcher, self.sigma, self.time_scale = matcher(sigma=sigma), float(sigma), float(time_scale)

    def describe(self) -> dict:
        return {"objective": self.name, "time_scale": self.time_scale}  # coupling and sigma only shape training

    def sample_times(self, n, generator=None):
        """t ~ U[0, 1], one per sample."""
        return torch.rand(n, generator=generator)

    def couple(self, noise, x0):
        """Exact OT: the plan between a batch's noise and data is a permutation; reorder the noise by it."""
        if self.coupling != Coupling.EXACT_OT:
            return noise
        plan = torch.as_tensor(self.matcher.ot_sampler.get_map(noise, x0))
        return noise[plan.argmax(0)]  # noise index paired with each data sample

    def training_pair(self, x0, noise, t, generator=None):
        """(x_t, u_t) from torchcfm's path; with sigma > 0 its Gaussian width is drawn from ``generator``."""
        width = torch.randn(x0.shape, generator=generator).to(x0.device) if self.sigma > 0 else torch.zeros_like(x0)
        x_t = self.matcher.sample_xt(noise, x0, t, width)
        return x_t, self.matcher.compute_conditional_flow(noise, x0, t, x_t)

    def network_time(self, t):
        return (1 - t.float()) * self.time_scale

    def predict(self, output, x_t, t):
        """On the straight path: x0 = x_t + (1 - t) u, eps = x_t - t u."""
        t = pad_like(t.float(), x_t)
        return x_t - t * output, x_t + (1 - t) * output

    def alpha_sigma(self, t):
        t = t.float()
        return t, 1 - t

    def time_grid(self, steps, device=None, spacing=None):
        """``steps`` equal steps from t = 0 (noise) to t = 1 (data) (continuous time: no spacing to choose)."""
        steps = 10 if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return torch.linspace(0.0, 1.0, steps + 1, device=device)

    def time_at_level(self, level, n, device=None):
        """t = 1 - level."""
        return torch.full((n,), 1.0 - float(level), device=device)

    def velocity(self, output, x_t, t):
        return output
