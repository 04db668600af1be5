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

from cmrsynth.bundle_run import trainer_progress
from cmrsynth.engines import EMAUpdater, ResumableCheckpoint, TimeBudget, ValidateAtEnd, latest_checkpoint, start_from
from cmrsynth.errors import CMRDataError


def _trainer(net, max_epochs, handlers):
    from monai.engines import SupervisedTrainer

    data = [{"image": torch.rand(2, 5), "label": torch.rand(2, 1)} for _ in range(3)]
    return SupervisedTrainer(device="cpu", max_epochs=max_epochs, train_data_loader=data, network=net,
                             optimizer=torch.optim.SGD(net.parameters(), 0.1), loss_function=torch.nn.MSELoss(),
                             train_handlers=handlers)


def test_checkpoint_resumes_where_training_stopped(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 1)
    ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    first = _trainer(net, 2, [ResumableCheckpoint(tmp_path, {"network": net, "ema": ema}), EMAUpdater(ema, net)])
    first.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_final.pt"]
    weights = net.weight.detach().clone()
    net2 = torch.nn.Linear(5, 1)
    ema2 = torch.optim.swa_utils.AveragedModel(net2, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    second = _trainer(net2, 4, [ResumableCheckpoint(tmp_path, {"network": net2, "ema": ema2}), EMAUpdater(ema2, net2)])
    seen = []
    second.add_event_handler(
        __import__("ignite").engine.Events.EPOCH_STARTED, lambda e: seen.append((e.state.epoch, net2.weight.detach().clone()))
    )
    second.run()
    assert [epoch for epoch, _ in seen] == [3, 4] and second.state.iteration == 12
    torch.testing.assert_close(seen[0][1], weights)  # epoch 3 starts from the weights epoch 2 ended with
    assert trainer_progress(latest_checkpoint(tmp_path)) == {"epoch": 4, "iteration": 12}


def test_ema_tracks_the_network():
    net = torch.nn.Linear(2, 1)
    ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.5))
    trainer = _trainer(torch.nn.Linear(5, 1), 1, [])
    EMAUpdater(ema, net).attach(trainer)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update_parameters(net)  # first update copies
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update_parameters(net)
    torch.testing.assert_close(ema.module.weight, torch.full_like(net.weight, 2.0))


def test_time_budget_stops_training():
    net = torch.nn.Linear(5, 1)
    trainer = _trainer(net, 1000, [TimeBudget(minutes=0.0)])
    trainer.run()
    assert trainer.state.iteration == 1


class _CountingValidator:
    def __init__(self):
        self.epochs = []

    def run(self, epoch):
        self.epochs.append(epoch)


@pytest.mark.parametrize("budget, expected", [(0.0, [1]), (None, [])])
def test_validate_at_end_only_when_training_stopped_between_validations(budget, expected):
    validator = _CountingValidator()
    trainer = _trainer(torch.nn.Linear(5, 1), 2, [TimeBudget(minutes=budget), ValidateAtEnd(validator, interval=2)])
    trainer.run()  # without a budget: 2 full epochs end exactly on a validation epoch
    assert validator.epochs == expected


def test_validate_at_end_when_stopped_on_a_validation_iteration():
    """A stop on the last iteration of a validation epoch skips that epoch's EPOCH_COMPLETED (and its validation)."""
    from ignite.engine import Events

    validator = _CountingValidator()
    trainer = _trainer(torch.nn.Linear(5, 1), 4, [ValidateAtEnd(validator, interval=2)])
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=6), lambda e: e.terminate())  # 3 iterations per epoch
    trainer.run()
    assert validator.epochs == [2]


def test_resume_never_loads_a_torn_or_foreign_checkpoint(tmp_path):
    """A newer checkpoint that does not load with weights_only=True (torn, or holding arbitrary objects) is skipped
    with a warning; training resumes from the last complete one."""
    import os
    import pickle

    from cmrsynth.engines import load_checkpoint
    from cmrsynth.errors import CMRDataError

    net = torch.nn.Linear(5, 1)
    _trainer(net, 2, [ResumableCheckpoint(tmp_path, {"network": net})]).run()
    (tmp_path / "checkpoint_final.pt").unlink()
    good = tmp_path / "checkpoint_epoch=2.pt"
    torn = tmp_path / "checkpoint_epoch=3.pt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "checkpoint_epoch=4.pt"
    foreign.write_bytes(pickle.dumps({"payload": _Unsafe()}))  # a pickle with a class weights_only refuses
    now = good.stat().st_mtime_ns
    os.utime(torn, ns=(now + 10**9, now + 10**9))
    os.utime(foreign, ns=(now + 2 * 10**9, now + 2 * 10**9))
    for bad in (torn, foreign):
        with pytest.raises(CMRDataError, match=f"{bad.name}: not a loadable checkpoint"):
            load_checkpoint(bad)
    net2 = torch.nn.Linear(5, 1)
    trainer = _trainer(net2, 3, [ResumableCheckpoint(tmp_path, {"network": net2})])
    trainer.run()
    assert trainer.state.iteration == 9 and not _Unsafe.loaded
    torch.testing.assert_close(load_checkpoint(tmp_path / "checkpoint_final.pt")["network"]["weight"], net2.weight.detach())


def test_resume_refuses_when_no_checkpoint_loads(tmp_path):
    from cmrsynth.errors import CMRDataError

    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"PK\x03\x04 not a zip")
    net = torch.nn.Linear(5, 1)
    with pytest.raises(CMRDataError, match="no checkpoint loads"):
        _trainer(net, 2, [ResumableCheckpoint(tmp_path, {"network": net})]).run()


class _Unsafe:
    loaded = False

    def __reduce__(self):
        return (_Unsafe._mark, ())

    @staticmethod
    def _mark():
        _Unsafe.loaded = True
        return _Unsafe()


def _net_and_ema(seed: int):
    torch.manual_seed(seed)
    net = torch.nn.Linear(5, 1)
    return net, torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))


def test_start_from_loads_pretrained_ema_weights_unless_the_run_resumes(tmp_path):
    public, public_ema = _net_and_ema(0)
    with torch.no_grad():
        public_ema.module.weight.fill_(0.5)
    torch.save({"ema": public_ema.state_dict()}, tmp_path / "best_ema.pt")
    net, ema = _net_and_ema(1)
    run = tmp_path / "run"
    assert start_from(tmp_path / "best_ema.pt", run, net, ema) == str(tmp_path / "best_ema.pt")
    assert torch.equal(net.weight, torch.full_like(net.weight, 0.5)) and torch.equal(ema.module.weight, net.weight)
    assert start_from(None, run, net, ema) is None
    run.mkdir()
    torch.save({}, run / "checkpoint_epoch=1.pt")  # a run of its own: resume wins over the pretrained weights
    fresh, fresh_ema = _net_and_ema(2)
    assert start_from(tmp_path / "best_ema.pt", run, fresh, fresh_ema) is None
    assert not torch.equal(fresh.weight, net.weight)
    torch.save(public_ema.state_dict(), tmp_path / "bare.pt")  # a best_ema.pt written before cards: the EMA alone
    assert start_from(tmp_path / "bare.pt", tmp_path / "other", fresh, fresh_ema) == str(tmp_path / "bare.pt")
    assert torch.equal(fresh.weight, torch.full_like(fresh.weight, 0.5))
    torch.save({"network": public.state_dict()}, tmp_path / "training.pt")  # neither an EMA nor its weights
    with pytest.raises(CMRDataError, match="training.pt: weights do not fit the EMA"):
        start_from(tmp_path / "training.pt", tmp_path / "third", *_net_and_ema(3))
