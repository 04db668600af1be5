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
"""Few-step students by consistency distillation: one evaluation maps any point of the teacher's ODE trajectory to
the trajectory's clean end.

A consistency function f(x_t, t) is constant along each trajectory of the teacher's probability-flow ODE and is the
identity at the clean end (the boundary condition). Consistency distillation (Song et al., ICML 2023, Algorithm 2)
learns it without solving the ODE to the end: a training sample x0 is noised to a time t_{n+1} of an N-step grid,
x_{t_{n+1}} = alpha x0 + sigma z; one step of the teacher's ODE solver gives x_hat_{t_n} on the same trajectory; and the
student is pulled towards a target network theta^- one grid time later:

    L = d( f_theta(x_{t_{n+1}}, t_{n+1}), stopgrad f_theta^-(x_hat_{t_n}, t_n) ),   theta^- <- mu theta^- + (1 - mu) theta.

Agreement spreads from the clean end, where f is exact, up the grid, so one evaluation at pure noise returns the
teacher's N-step sample. Every piece is the generator's own: the grid is the objective's ``time_grid(N)``, the solver
step is the teacher's deterministic DDIM step (the ``ddim`` sampler's), f is the objective's x0 prediction
(``Objective.predict``), and d is the pseudo-Huber distance of Song & Dhariwal (ICLR 2024), which needs no perceptual
network (LPIPS cannot be downloaded here). The student keeps the teacher's objective, network and card: it loads in the
bundle's own inference config, and DDIM at one step returns f at pure noise.

Parameterisation. f = x0_hat(output, x_t, t) is CM's c_skip(t) x + c_out(t) F(x, t) with c_skip = alpha, c_out = -sigma
for v-prediction and c_skip = 1 / alpha, c_out = -sigma / alpha for eps-prediction: both are the identity exactly at
the grid's clean end (t = -1 of a DDPM objective: alpha = 1, sigma = 0), and ``consistency_function`` makes it so for
a sample-predicting objective too. The network is never evaluated there: the last interval's target is the teacher's
own step to the clean end. At the smallest network time (t = 0, sigma = 0.01 on the linear schedule) f(x, 0) = x only
up to O(sigma). That is acceptable: CM needs the identity at t_min, which here is the clean end, where it is exact;
at t = 0 the network is only asked to agree with it one (short) teacher step later, as at every other grid time.

Compared with reflow (``generative.distill``): no couplings are drawn before training, but every training step
evaluates the teacher and the target once more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
from monai.inferers import Inferer

from cmrsynth.generative.generator import Generator
from cmrsynth.generative.objectives import Objective, pad_like
from cmrsynth.generative.training import ObjectivePrepareBatch, plain_tensor

#: iCT's pseudo-Huber scale per square root of the data dimension: c = 0.00054 sqrt(d)
PSEUDO_HUBER_SCALE = 0.00054


def consistency_function(objective: Objective, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(x_t, t): the clean sample a network output implies at x_t (B, C, H, W), times t (B,); x_t itself where the
    path is clean (sigma = 0, so alpha = 1): the boundary condition f(x, t_min) = x."""
    _, x0 = objective.predict(output, x_t, t)
    _, sigma = objective.alpha_sigma(t)
    # eps and v give the identity there by themselves (c_skip = 1, c_out = 0), x0-prediction does not; at the smallest
    # network time f(x, t) = x holds only up to O(sigma), which is acceptable (module docstring)
    return torch.where(pad_like(sigma == 0, x_t), x_t, x0)


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """d(x, y) = sqrt(||x - y||^2 + c^2) - c per sample (Song & Dhariwal 2024): quadratic near 0, linear (robust to
    outliers) far away.

    Args:
        x, y: (B, ...) tensors.
        c: the scale; None for 0.00054 sqrt(d), d the elements of one sample.

    Returns:
        (B,) distances.
    """
    c = PSEUDO_HUBER_SCALE * math.sqrt(x[0].numel()) if c is None else c
    return ((x - y).flatten(1).pow(2).sum(1) + c**2).sqrt() - c


class PseudoHuberLoss(nn.Module):
    """Mean pseudo-Huber distance of a batch (``pseudo_huber``), the consistency loss's d.

    Args:
        c: the scale (> 0); None for 0.00054 sqrt(d), d the elements of one sample.

    References:
        Song & Dhariwal, Improved Techniques for Training Consistency Models, ICLR 2024.
    """

    def __init__(self, c: float | None = None):
        super().__init__()
        if c is not None and not c > 0:
            raise ValueError(f"the pseudo-Huber scale c must be > 0 (or None for 0.00054 sqrt(d)), got {c}")
        self.c = c

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean over the batch of d(input, target)."""
        return pseudo_huber(input, target, self.c).mean()


class ConsistencyInferer(Inferer):
    """Evaluate a network as a consistency function: f(x_t, t) of its output (``consistency_function``).

    The trainer and evaluator call ``inferer(x_t, network, times=t, mask=..., class_labels=...)`` with the objective's
    times from ``ConsistencyPrepareBatch``; the network receives the objective's network time.

    Args:
        objective: the student's (and teacher's) objective.
    """

    def __init__(self, objective: Objective):
        self.objective = objective

    def __call__(self, inputs: torch.Tensor, network, *args, times: torch.Tensor, **kwargs) -> torch.Tensor:
        """f(inputs, times) (B, C, H, W)."""
        output = network(inputs, *args, timesteps=self.objective.network_time(times), **kwargs)
        return consistency_function(self.objective, output, inputs, times)


def target_network(teacher: Generator, decay: float = 0.95) -> torch.optim.swa_utils.AveragedModel:
    """The target network theta^-: an EMA of the student (``EMAUpdater(target, network)`` after every step) that
    starts from the teacher's weights and is never trained itself.

    Args:
        teacher: the frozen teacher (``load_teacher``), whose denoiser is copied.
        decay: mu of theta^- <- mu theta^- + (1 - mu) theta (0: the student of the last step, as in iCT).

    Returns:
        an ``AveragedModel`` whose first update already averages (a fresh one would copy the student).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"the target network's decay must be in [0, 1), got {decay}")
    ema = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    target = torch.optim.swa_utils.AveragedModel(teacher.denoiser, multi_avg_fn=ema)
    target.n_averaged.fill_(1)
    return target.requires_grad_(False).eval()


class ConsistencyPrepareBatch(ObjectivePrepareBatch):
    """Training batches of consistency distillation: (x_{t_{n+1}}, f_theta^-(x_hat_{t_n}, t_n), (), conditions).

    For each clean sample a grid interval n is drawn uniformly; the sample is noised to the interval's noisier time,
    the teacher takes its deterministic DDIM step to the cleaner time with the sample's own mask and class (no
    guidance), and the target network's consistency function there is the regression target. ``ConsistencyInferer``
    then evaluates the student at the noisier time. Hooks: ``get_intervals``, ``teacher_step``, ``get_target``.

    Args:
        objective: the student's objective (the teacher's must be the same).
        teacher: the frozen teacher generator (``load_teacher``).
        target: the target network (``target_network``).
        steps: N, the intervals of the teacher's grid (``objective.time_grid(steps)``, noise to the clean end).
        spacing: the grid's timestep spacing (None: the objective's).
        image_key, mask_key, class_key, seed, codec: as ``ObjectivePrepareBatch`` (no condition dropout: a student is
            sampled without guidance).

    References:
        Song et al., Consistency Models, ICML 2023, Algorithm 2.
    """

    def __init__(self, objective: Objective, teacher: Generator, target: nn.Module | None, steps: int = 50,
                 spacing: str | None = None, image_key: str = "image", mask_key: str | None = None,
                 class_key: str | None = None, seed: int | None = None, codec=None):
        ours, theirs = objective.describe(), teacher.objective.describe()
        if ours != theirs:
            raise ValueError(f"the teacher's objective {theirs} differs from the student's {ours}")
        super().__init__(objective, image_key, mask_key, class_key, seed=seed, codec=codec)
        self.teacher, self.target = teacher, target
        self.times = objective.time_grid(steps, spacing=spacing)  # (N + 1,) from noise to the clean end

    @property
    def steps(self) -> int:
        """N, the grid's intervals."""
        return len(self.times) - 1

    def get_intervals(self, x0: torch.Tensor) -> torch.Tensor:
        """n ~ U{0, ..., N - 1} per sample: interval n runs from ``times[n]`` to ``times[n + 1]`` (0: from pure noise)."""
        return torch.randint(0, self.steps, (x0.shape[0],), generator=self.generator).to(x0.device)

    @torch.no_grad()
    def teacher_step(self, x: torch.Tensor, n: torch.Tensor, conditions: Mapping) -> torch.Tensor:
        """x_hat at ``times[n + 1]``: the teacher's deterministic DDIM step from x at ``times[n]`` (Song et al., ICLR 2021,
        Eq. (12): x_s = alpha_s x0_hat + sigma_s eps_hat, x0_hat clipped as the sampler clips it), per sample (B,)."""
        times = self.times.to(x.device)
        model = self.teacher.bind(conditions.get("mask"), conditions.get("class_labels"))
        eps, x0 = model.denoised(x, times[n])
        alpha, sigma = model.alpha_sigma(times[n + 1])
        return pad_like(alpha, x) * x0 + pad_like(sigma, x) * eps

    @torch.no_grad()
    def get_target(self, x: torch.Tensor, n: torch.Tensor, conditions: Mapping) -> torch.Tensor:
        """f_theta^-(x_hat, times[n + 1]) of the teacher's step; at the clean end the step itself."""
        if self.target is None:
            raise ValueError("consistency distillation needs a target network (target_network(teacher, decay))")
        x_hat, s = self.teacher_step(x, n, conditions), self.times.to(x.device)[n + 1]
        output = self.target(x_hat, self.objective.network_time(s), **conditions)
        return consistency_function(self.objective, output, x_hat, s)

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        """Return (x_{t_{n+1}}, target, (), {"times", "mask", "class_labels"}) for ``ConsistencyInferer``."""
        with torch.no_grad():
            x0 = self.codec.encode(plain_tensor(batchdata[self.image_key], device, non_blocking))
        conditions = self.conditions(batchdata, x0.device, non_blocking)
        noise, n = self.get_noise(x0), self.get_intervals(x0)
        t = self.times.to(x0.device)[n]
        x_t = self.objective.add_noise(x0, self.couple(noise, x0), t)
        return x_t, self.get_target(x_t, n, conditions), (), {"times": t, **conditions}


class TeacherSolutionPrepareBatch(ConsistencyPrepareBatch):
    """Validation batches of a consistency student: the reference is the teacher's own DDIM solution from
    x_{t_{n+1}} to the clean end (the exact consistency function of its N-step grid), not a target network that moves
    while training. With a seed (fixed noise and intervals, restarted every run) the loss compares like with like.

    The solutions cost up to N teacher evaluations per batch; they are kept for the next run of the same
    deterministic validation (shuffle off, no augmentation) and recomputed for any batch whose x_t differs.

    Args:
        as ``ConsistencyPrepareBatch``, without a target network.
    """

    def __init__(self, objective: Objective, teacher: Generator, steps: int = 50, **kwargs):
        self._solutions: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        super().__init__(objective, teacher, None, steps, **kwargs)

    def reset(self) -> None:
        """Restart the seeded generator and the count of batches."""
        super().reset()
        self._batch = 0

    @torch.no_grad()
    def teacher_solution(self, x: torch.Tensor, n: torch.Tensor, conditions: Mapping) -> torch.Tensor:
        """The teacher's DDIM steps from ``times[n]`` to the clean end, per sample (B,)."""
        for m in range(int(n.min()), self.steps):
            moving = pad_like(n <= m, x)
            x = torch.where(moving, self.teacher_step(x, torch.full_like(n, m), conditions), x)
        return x

    def get_target(self, x, n, conditions):
        """The teacher's solution from x, kept for this batch's next run."""
        key, self._batch = self._batch, self._batch + 1
        kept = self._solutions.get(key)
        if kept is None or kept[0].shape != x.shape or not torch.equal(kept[0], x):
            kept = self._solutions[key] = (x, self.teacher_solution(x, n, conditions))
        return kept[1]
