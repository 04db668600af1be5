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
from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from cmrsynth.generative import DiffusionObjective, FlowMatchingObjective
from tests.generative.helpers import ddpm_objective


def _images(n, seed):
    return torch.rand((n, 1, 16, 16), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_diffusion_outputs_imply_the_noise_and_the_clean_sample(kind):
    objective = ddpm_objective(kind)
    x0, noise, t = _images(3, 0), _images(3, 1), torch.tensor([5, 300, 900])
    x_t, target = objective.training_pair(x0, noise, t)
    abar = objective.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)  # Ho et al. Eq. (4)
    expected = {"epsilon": noise, "sample": x0, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x0}[kind]
    torch.testing.assert_close(target, expected)
    eps, x0_hat = objective.predict(target, x_t, t)
    torch.testing.assert_close(eps, noise, atol=2e-3, rtol=0)
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=0)


def test_flow_matching_path_target_and_network_time():
    objective = FlowMatchingObjective()
    x0, noise, t = _images(3, 0), _images(3, 1), torch.tensor([0.0, 0.25, 0.9])
    x_t, target = objective.training_pair(x0, noise, t)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, tt * x0 + (1 - tt) * noise)  # torchcfm: t x1 + (1 - t) x0, x1 the data
    torch.testing.assert_close(target, x0 - noise)
    eps, x0_hat = objective.predict(target, x_t, t)
    torch.testing.assert_close(eps, noise)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(objective.network_time(t), torch.tensor([1000.0, 750.0, 100.0]))
    torch.testing.assert_close(objective.time_at_level(0.2, 2), torch.tensor([0.8, 0.8]))


def test_flow_matching_sigma_widens_the_path_with_the_given_generator():
    objective = FlowMatchingObjective(sigma=0.1)
    x0, noise, t = _images(2, 0), _images(2, 1), torch.tensor([0.5, 0.5])
    a = objective.training_pair(x0, noise, t, torch.Generator().manual_seed(3))[0]
    b = objective.training_pair(x0, noise, t, torch.Generator().manual_seed(3))[0]
    torch.testing.assert_close(a, b)
    assert 0.05 < (a - (0.5 * x0 + 0.5 * noise)).std() < 0.15


def test_exact_ot_coupling_repairs_noise_only_and_lowers_the_cost():
    objective = FlowMatchingObjective(coupling="exact_ot")
    x0, noise = _images(8, 0), torch.randn((8, 1, 16, 16), generator=torch.Generator().manual_seed(1))
    paired = objective.couple(noise, x0)
    order = [int(torch.nonzero((noise == p).all(dim=(1, 2, 3)))[0]) for p in paired]
    assert sorted(order) == list(range(8))  # a permutation of the batch's noise
    cost = lambda n: ((n - x0) ** 2).sum().item()  # noqa: E731
    assert cost(paired) <= cost(noise)
    assert FlowMatchingObjective().couple(noise, x0) is noise


def test_time_grids_and_levels():
    ddpm = ddpm_objective()
    grid = ddpm.time_grid(50)
    assert len(grid) == 51 and grid[0] == 999 and grid[-2] == 0 and grid[-1] == -1
    assert ddpm.time_grid(None)[0] == 999 and len(ddpm.time_grid(None)) == 1001
    alpha, sigma = ddpm.alpha_sigma(torch.tensor([-1]))
    assert alpha.item() == 1.0 and sigma.item() == 0.0  # the clean end of every grid
    assert ddpm.time_at_level(0.5, 1).item() == 500 and ddpm.time_at_level(1.0, 1).item() == 999
    torch.testing.assert_close(FlowMatchingObjective().time_grid(4), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_trailing_spacing_spends_every_step_on_noise():
    """Lin et al. 2024: with trailing spacing two steps evaluate at 999 and 499, not at 999 and the clean end."""
    trailing = DiffusionObjective(DDPMScheduler(1000), "v_prediction", timestep_spacing="trailing")
    assert trailing.time_grid(2).tolist() == [999, 499, -1]
    assert ddpm_objective().time_grid(2).tolist() == [999, 0, -1]
    assert trailing.time_grid(1).tolist() == ddpm_objective().time_grid(1).tolist() == [999, -1]
    assert trailing.time_grid(50)[:2].tolist() == [999, 979] and trailing.time_grid(50)[-2] == 19
    assert trailing.time_grid(None)[:-1].tolist() == list(range(999, -1, -1))
    with pytest.raises(ValueError, match=r"unknown timestep_spacing 'leading'; allowed: \['linspace', 'trailing'\]"):
        DiffusionObjective(DDPMScheduler(1000), timestep_spacing="leading")


def test_objective_errors_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown prediction_type 'x0'; allowed: \['epsilon', 'sample', 'v_prediction'\]"):
        DiffusionObjective(DDPMScheduler(1000), "x0")
    with pytest.raises(ValueError, match=r"unknown coupling 'sinkhorn'; allowed: \['exact_ot', 'independent'\]"):
        FlowMatchingObjective(coupling="sinkhorn")
    with pytest.raises(ValueError, match="sigma must be >= 0, got -0.1"):
        FlowMatchingObjective(sigma=-0.1)
    with pytest.raises(ValueError, match=r"steps must be in \[1, 1000\] for this objective, got 0"):
        ddpm_objective().time_grid(0)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        FlowMatchingObjective().time_grid(0)
    with pytest.raises(ValueError, match=r"no continuous time: it samples with \['ddpm', 'ddim'\]"):
        ddpm_objective().velocity(torch.zeros(1), torch.zeros(1), torch.zeros(1))
    assert isinstance(ddpm_objective(), DiffusionObjective)
