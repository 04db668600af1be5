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

from cmrsynth.errors import CMRDataError
from cmrsynth.generative import FlowMatchingObjective
from tests.generative.helpers import OBJECTIVES, ddpm_objective, tiny_generator


def _inputs(n=2):
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (n, 16, 16), generator=g)
    return torch.rand((n, 1, 16, 16), generator=g) * 2 - 1, torch.nn.functional.one_hot(label, 4).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_loss_at_is_the_training_loss_at_that_noise_level(name):
    objective = OBJECTIVES[name]()
    gen = tiny_generator(objective).eval()
    x0, mask = _inputs()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = objective.time_at_level(0.3, 2)
    x_t, target = objective.training_pair(x0, noise, t)
    with torch.no_grad():
        expected = ((gen.denoiser(x_t, objective.network_time(t), mask=mask) - target) ** 2).flatten(1).mean(1)
        torch.testing.assert_close(gen.loss_at(x0, 0.3, mask=mask, noise=noise), expected)
        assert not torch.equal(gen.loss_at(x0, 0.3, mask=mask, noise=noise), gen.loss_at(x0, 0.8, mask=mask, noise=noise))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_sample_shapes_and_evaluations(name):
    gen = tiny_generator(OBJECTIVES[name](), groups=["NOR", "DCM"])
    _, mask = _inputs(3)
    out, nfe = gen.sample(mask=mask, class_labels=torch.tensor([0, 1, 2]), num_inference_steps=4, guidance_scale=2.0)
    assert out.shape == (3, 1, 16, 16) and torch.isfinite(out).all() and nfe == 4


def test_checkpoint_of_another_objective_or_shape_is_refused_by_name(tmp_path):
    ddpm, fm = tiny_generator(OBJECTIVES["ddpm"]()), tiny_generator(FlowMatchingObjective())
    path = tmp_path / "checkpoint_final.pt"
    torch.save({"ema": ddpm.network.state_dict(), "card": ddpm.card.state_dict()}, path)
    ddpm.load_checkpoint(path)
    with pytest.raises(CMRDataError, match=r"checkpoint_final.pt: checkpoint was written for another generator \(objective: 'ddpm' in the file, 'flow_matching' here"):
        fm.load_checkpoint(path)
    wider = tiny_generator(OBJECTIVES["ddpm"](), in_channels=6)
    with pytest.raises(CMRDataError, match="weights do not fit generator's network"):
        wider.load_checkpoint(path)
    with pytest.raises(CMRDataError, match="missing.pt: generator checkpoint not found"):
        ddpm.load_checkpoint(tmp_path / "missing.pt")


def test_card_refuses_a_resume_by_another_objective():
    ddpm, fm = tiny_generator(OBJECTIVES["ddpm"]()), tiny_generator(FlowMatchingObjective())
    with pytest.raises(CMRDataError, match="another generator"):
        fm.card.load_state_dict(ddpm.card.state_dict())


def test_flops_per_sample_count_every_evaluation_and_both_guided_passes():
    generator = tiny_generator(ddpm_objective(), groups=["NOR"])
    one, two = generator.flops_per_sample(1), generator.flops_per_sample(2)
    assert one > 0 and two == 2 * one  # an identity codec decodes for free
    assert generator.flops_per_sample(1, guidance_scale=2.0) == 2 * one
    generator.image_size *= 2  # convolutions cost in proportion to the pixels (the time embedding does not)
    assert 3.5 * one < generator.flops_per_sample(1) < 4.5 * one
