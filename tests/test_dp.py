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

import warnings

import pytest
import torch
from monai.engines import SupervisedTrainer

from cmrsynth.dp import DPTraining, budget_spent

warnings.filterwarnings("ignore", module="opacus")


def _loader(n=64):
    data = [{"image": torch.randn(4), "label": torch.randn(1)} for _ in range(n)]
    return torch.utils.data.DataLoader(data, batch_size=8)


def _dp(net, **kw):
    args = {"target_epsilon": 5.0, "delta": 1e-3, "epochs": 3, "max_grad_norm": 1.0} | kw
    return DPTraining(net, torch.optim.SGD(net.parameters(), 0.1), _loader(), **args)


def test_dp_training_spends_at_most_its_budget_and_resumes_counting():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 1))
    dp = _dp(net, target_epsilon=2.0, epochs=2)
    trainer = SupervisedTrainer(device="cpu", max_epochs=50, train_data_loader=dp.data_loader, network=dp.network,
                                optimizer=dp.optimizer, loss_function=torch.nn.MSELoss(), train_handlers=[dp])
    trainer.run()
    assert trainer.state.epoch < 50, "the privacy budget stopped training"
    spent = dp.epsilon()
    assert 1.5 < spent <= 2.0 and trainer.state.metrics["dp_epsilon"] <= spent  # never over, and close to it
    fresh = _dp(torch.nn.Linear(4, 1), target_epsilon=2.0, epochs=2)
    assert fresh.epsilon() == 0.0
    fresh.load_state_dict(dp.state_dict())
    assert fresh.epsilon() == pytest.approx(spent)
    saved = budget_spent(dp.state_dict(), delta=1e-3)  # what a benchmark reads back from the checkpoint
    assert saved["epsilon"] == pytest.approx(spent) and saved["noise_multiplier"] == pytest.approx(dp.noise_multiplier)
    assert saved["steps"] == trainer.state.iteration
    with pytest.raises(ValueError, match="no steps"):
        budget_spent({"history": []}, delta=1e-3)


def test_dp_training_refuses_batchnorm_and_a_large_delta():
    with pytest.raises(ValueError, match="DP-SGD cannot train this network: .*BatchNorm"):
        _dp(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)))
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1/64\]"):
        _dp(torch.nn.Linear(4, 1), delta=0.1)
