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
"""Shared tiny pieces of the generative tests: oracles that know the data, tiny UNets, generators of each objective."""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from cmrsynth.generative import (ClassIndex, ConditionalDenoiser, DiffusionObjective, FlowMatchingObjective, Generator,
                                 Objective)


def objective_time(objective: Objective, network_time: torch.Tensor) -> torch.Tensor:
    """Invert ``network_time`` (what a test network receives) to the objective's own time."""
    if isinstance(objective, FlowMatchingObjective):
        return 1 - network_time.float() / objective.time_scale
    return network_time


class TargetOracle(torch.nn.Module):
    """Answers what a perfect network regresses when the clean sample is ``clean(x_t, t)``: the objective's
    training target for that x0 and the noise that x_t then implies."""

    def __init__(self, objective: Objective, clean):
        super().__init__()
        self.objective, self.clean = objective, clean

    def forward(self, x, timesteps, mask=None, class_labels=None):
        t = objective_time(self.objective, timesteps)
        x0 = self.clean(x, t)
        alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in self.objective.alpha_sigma(t))
        eps = (x - alpha * x0) / sigma.clamp(min=1e-6)
        return self.objective.training_pair(x0, eps, t)[1]


def ddpm_objective(kind: str = "v_prediction", steps: int = 1000) -> DiffusionObjective:
    return DiffusionObjective(DDPMScheduler(steps, prediction_type=kind), kind)


OBJECTIVES = {"ddpm": ddpm_objective, "fm": lambda: FlowMatchingObjective()}


def tiny_generator(objective: Objective, in_channels: int = 5, out_channels: int = 1, mask_mode: str = "concat",
                   groups=(), seed: int = 0, positions=(), **kwargs) -> Generator:
    """A generator of a 0.01 M-parameter UNet, mask-conditioned by default."""
    torch.manual_seed(seed)
    classes = ClassIndex(groups, positions=positions)
    net = DiffusionModelUNet(2, in_channels, out_channels, channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                             norm_num_groups=8, num_class_embeds=classes.num_classes + 1 if classes.num_classes else None)
    with torch.no_grad():  # MONAI zero-initialises output layers; tests need a network whose output moves
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    sampler = "ddim" if isinstance(objective, DiffusionObjective) else "euler"
    return Generator(ConditionalDenoiser(net, mask_mode), objective, classes=classes, data_channels=out_channels,
                     image_size=16, sampler=sampler, num_inference_steps=3, **kwargs)
