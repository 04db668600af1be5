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
"""Samplers with one signature (k-diffusion style), kept apart from the time grids the objectives make.

``sampler(model, x, times, callback=None, generator=None, **options) -> x`` where

- ``model`` answers ``denoised(x, t) -> (eps, x0)`` (x0 clipped as the objective says), ``alpha_sigma(t)`` and
  ``velocity(x, t)`` with the conditions, guidance and network bound in (``generative.generator.BoundModel``);
- ``x`` is the starting noise (B, C, H, W) and ``times`` the objective's grid from noise to data;
- ``callback(i, x)`` is called after every step; ``generator`` draws the noise of stochastic steps.

The loop is ours rather than MONAI's ``DiffusionInferer.sample``, which branches on the scheduler's type; here
every objective exposes the same path (alpha, sigma) and every sampler works on it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _steps(times: torch.Tensor):
    return zip(range(len(times) - 1), times[:-1], times[1:])


def _batch(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.expand(x.shape[0]).to(x.device)


def _pad(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


@torch.no_grad()
def sample_ddim(model, x, times, callback=None, generator=None):
    """Deterministic DDIM (eta = 0): x_s = alpha_s x0_hat + sigma_s eps_hat (Song et al., ICLR 2021, Eq. (12));
    on a straight flow-matching path this is exactly the Euler step."""
    for i, t, s in _steps(times):
        eps, x0 = model.denoised(x, _batch(t, x))
        alpha, sigma = model.alpha_sigma(_batch(s, x))
        x = _pad(alpha, x) * x0 + _pad(sigma, x) * eps
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def sample_ddpm(model, x, times, callback=None, generator=None):
    """Ancestral sampling from the Gaussian posterior q(x_s | x_t, x0_hat) (Ho et al. 2020, Eq. (6)-(7), written
    for any alpha/sigma path as in Kingma et al. 2021, Eq. (29)-(31)); no noise on the last step."""
    for i, t, s in _steps(times):
        _, x0 = model.denoised(x, _batch(t, x))
        (a_t, s_t), (a_s, s_s) = model.alpha_sigma(_batch(t, x)), model.alpha_sigma(_batch(s, x))
        a_ts = a_t / a_s.clamp(min=1e-12)
        var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp(min=0)
        mean = _pad(a_ts * s_s**2 / s_t**2, x) * x + _pad(a_s * var_ts / s_t**2, x) * x0
        std = _pad((var_ts * s_s**2 / s_t**2).clamp(min=1e-20).sqrt(), x)
        noise = torch.randn(x.shape, generator=generator).to(x.device) if i < len(times) - 2 else 0.0
        x = mean + std * noise
        if callback is not None:
            callback(i, x)
    return x


def _ode_step(method: str) -> Callable:
    """One fixed step of an explicit Runge-Kutta method on dx/dt = f(x, t)."""

    def euler(f, x, t, h):
        return x + h * f(x, t)

    def midpoint(f, x, t, h):
        return x + h * f(x + h / 2 * f(x, t), t + h / 2)

    def heun(f, x, t, h):
        k1 = f(x, t)
        return x + h / 2 * (k1 + f(x + h * k1, t + h))

    def rk4(f, x, t, h):
        k1 = f(x, t)
        k2 = f(x + h / 2 * k1, t + h / 2)
        k3 = f(x + h / 2 * k2, t + h / 2)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(x + h * k3, t + h))

    return {"euler": euler, "midpoint": midpoint, "heun": heun, "rk4": rk4}[method]


def fixed_step_ode(method: str) -> Callable:
    """A sampler integrating the model's velocity over the grid with ``method`` (euler: 1 evaluation per step,
    midpoint and heun: 2, rk4: 4)."""
    step = _ode_step(method)

    @torch.no_grad()
    def sample(model, x, times, callback=None, generator=None):
        f = lambda y, t: model.velocity(y, _batch(t, y))  # noqa: E731
        for i, t, s in _steps(times):
            x = step(f, x, t, s - t)
            if callback is not None:
                callback(i, x)
        return x

    sample.__doc__ = f"Fixed-step {method} integration of dx/dt = v(x, t) from the first grid time to the last."
    return sample


@torch.no_grad()
def sample_adaptive(model, x, times, callback=None, generator=None, method: str = "dopri5", rtol: float = 1e-4,
                    atol: float = 1e-4):
    """Adaptive Runge-Kutta (torchdiffeq, Dormand-Prince 5(4) by default) from the first grid time to the last;
    the number of evaluations it chose is the model's ``nfe``. The default tolerances are torchcfm's examples'
    (1e-3 left 6 % errors on an exact Gaussian flow)."""
    from torchdiffeq import odeint

    span = torch.stack([times[0], times[-1]]).float().to(x.device)
    out = odeint(lambda t, y: model.velocity(y, _batch(t, y)), x, span, method=method, rtol=rtol, atol=atol)[-1]
    if callback is not None:
        callback(0, out)
    return out


#: sampler name -> sampler; every entry has the signature of the module docstring.
SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": fixed_step_ode("euler"),
    "midpoint": fixed_step_ode("midpoint"),
    "heun": fixed_step_ode("heun"),
    "rk4": fixed_step_ode("rk4"),
    "dopri5": sample_adaptive,
}


def get_sampler(name: str) -> Callable:
    """The registered sampler called ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {sorted(SAMPLERS)}")
    return SAMPLERS[name]
