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
from monai.networks.nets import DiffusionModelUNet, SPADEDiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from cmrsynth.bundle_run import trainer_progress
from cmrsynth.engines import (
    ConditionalDenoiser,
    DenoisingPrepareBatch,
    EMAUpdater,
    ResumableCheckpoint,
    TimeBudget,
    ValidateAtEnd,
    guided_output,
    latest_checkpoint,
    sample_diffusion,
)


def _unet(in_channels=5, out_channels=1, classes=None):
    return DiffusionModelUNet(2, in_channels, out_channels, channels=(8, 8), attention_levels=(False, False),
                              num_res_blocks=1, norm_num_groups=8, num_class_embeds=classes)


def _batch(n=4, size=16):
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (n, size, size), generator=g)
    onehot = torch.nn.functional.one_hot(label, 4).permute(0, 3, 1, 2).float()
    return {"image": torch.rand((n, 1, size, size), generator=g) * 2 - 1, "label": onehot, "class": torch.tensor([0, 1, 2, 3][:n])}


class OracleDenoiser(torch.nn.Module):
    """Knows the single data point x0 and answers in the scheduler's prediction type.

    eps(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t); v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0.
    """

    def __init__(self, x0, scheduler):
        super().__init__()
        self.x0, self.abar, self.kind = x0, scheduler.alphas_cumprod, scheduler.prediction_type

    def forward(self, x, t, mask=None, class_labels=None):
        abar = self.abar[t].view(-1, 1, 1, 1)
        eps = (x - abar.sqrt() * self.x0) / (1 - abar).sqrt()
        if self.kind == "sample":
            return self.x0.expand_as(x)
        if self.kind == "v_prediction":
            return abar.sqrt() * eps - (1 - abar).sqrt() * self.x0
        return eps


SAMPLERS = [(DDPMScheduler(1000), None), (DDIMScheduler(1000), 50), (DDIMScheduler(1000), 10),
            (DDPMScheduler(1000, prediction_type="v_prediction"), None), (DDIMScheduler(1000, prediction_type="v_prediction"), 20),
            (DDIMScheduler(1000, prediction_type="sample"), 20)]


@pytest.mark.parametrize("scheduler, steps", SAMPLERS)
def test_oracle_denoiser_recovers_the_data_point(scheduler, steps):
    x0 = torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    noise = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    out = sample_diffusion(OracleDenoiser(x0, scheduler), scheduler, noise, steps, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, x0, atol=5e-4, rtol=0)  # float32 over up to 1000 steps


def test_wrong_oracle_is_not_recovered():
    """The sampler test can fail: an oracle for another point does not land on x0."""
    scheduler = DDIMScheduler(1000)
    x0 = torch.full((1, 1, 8, 8), 0.5)
    out = sample_diffusion(OracleDenoiser(-x0, scheduler), scheduler, torch.randn(1, 1, 8, 8), 20)
    assert (out - x0).abs().mean() > 0.5


def test_prepare_batch_noises_with_the_ddpm_formula():
    scheduler = DDPMScheduler(1000)
    prep = DenoisingPrepareBatch(scheduler, mask_key="label", class_key="class", seed=7)
    batch = _batch()
    x_t, target, args, kwargs = prep(batch)
    prep.reset()
    noise, t = prep.get_noise(batch["image"]), prep.get_timesteps(batch["image"])
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * batch["image"] + (1 - abar).sqrt() * noise)  # Ho et al. Eq. (4)
    torch.testing.assert_close(target, noise)
    assert args == () and set(kwargs) == {"timesteps", "mask", "class_labels"}
    torch.testing.assert_close(kwargs["timesteps"], t)
    torch.testing.assert_close(kwargs["mask"], batch["label"])


@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_prepare_batch_targets_of_other_prediction_types(kind):
    scheduler = DDPMScheduler(1000)
    prep = DenoisingPrepareBatch(scheduler, seed=7, prediction_type=kind)
    batch = _batch()
    _, target, _, _ = prep(batch)
    prep.reset()
    noise, t = prep.get_noise(batch["image"]), prep.get_timesteps(batch["image"])
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = batch["image"] if kind == "sample" else abar.sqrt() * noise - (1 - abar).sqrt() * batch["image"]
    torch.testing.assert_close(target, expected)


def test_prepare_batch_strips_metatensor():
    from monai.data import MetaTensor

    x_t, target, _, kw = DenoisingPrepareBatch(DDPMScheduler(10), mask_key="label")({k: MetaTensor(v) for k, v in _batch().items()})
    assert all(type(x) is torch.Tensor for x in (x_t, target, kw["mask"]))


def test_seeded_prepare_batch_repeats_after_reset_and_differs_without_seed():
    prep = DenoisingPrepareBatch(DDPMScheduler(1000), seed=3)
    a = prep(_batch())[0]
    prep.reset()
    torch.testing.assert_close(prep(_batch())[0], a)
    free = DenoisingPrepareBatch(DDPMScheduler(1000))
    assert not torch.equal(free(_batch())[0], free(_batch())[0])


def test_condition_dropout_drops_class_and_mask_together():
    prep = DenoisingPrepareBatch(DDPMScheduler(1000), mask_key="label", class_key="class", condition_dropout=0.5,
                                 null_class=10, seed=0)
    batch = {k: v.repeat(16, *([1] * (v.dim() - 1))) for k, v in _batch().items()}
    _, _, _, kw = prep(batch)
    dropped = kw["class_labels"] == 10
    assert 0 < dropped.sum() < len(dropped)
    assert (kw["mask"][dropped] == 0).all() and (kw["mask"][~dropped].sum((1, 2, 3)) > 0).all()


def test_prepare_batch_errors():
    with pytest.raises(ValueError, match="condition_dropout must be in \\[0, 1\\), got 1.5"):
        DenoisingPrepareBatch(DDPMScheduler(10), condition_dropout=1.5)
    with pytest.raises(ValueError, match="needs null_class"):
        DenoisingPrepareBatch(DDPMScheduler(10), class_key="class", condition_dropout=0.1)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        DenoisingPrepareBatch(DDPMScheduler(10), prediction_type="x0")


@pytest.mark.parametrize("mode", ["concat", "spade", "none"])
def test_denoiser_modes_shapes(mode):
    if mode == "spade":
        net = SPADEDiffusionModelUNet(2, 1, 1, label_nc=4, channels=(8, 8), attention_levels=(False, False),
                                      num_res_blocks=1, norm_num_groups=8, num_class_embeds=3)
    else:
        net = _unet(5 if mode == "concat" else 1, classes=3)
    d = ConditionalDenoiser(net, mode)
    b = _batch(3)
    out = d(b["image"], torch.tensor([1, 500, 999]), mask=b["label"], class_labels=torch.tensor([0, 1, 2]))
    assert out.shape == (3, 1, 16, 16)


def test_denoiser_errors():
    with pytest.raises(ValueError, match="unknown mask_mode 'film'"):
        ConditionalDenoiser(_unet(), "film")
    with pytest.raises(ValueError, match="does not fit a DiffusionModelUNet"):
        ConditionalDenoiser(_unet(), "spade")
    with pytest.raises(ValueError, match="needs a mask"):
        ConditionalDenoiser(_unet(), "concat")(torch.zeros(1, 1, 16, 16), torch.tensor([1]))


def test_guidance_combines_conditional_and_unconditional():
    calls = []

    def fake(x, t, mask=None, class_labels=None):
        calls.append(class_labels.tolist())
        return torch.full_like(x, 1.0 if class_labels[0] != 9 else 0.25)

    out = guided_output(fake, torch.zeros(1, 1, 2, 2), torch.tensor([5]), None, torch.tensor([2]), 3.0, 9)
    assert calls == [[2], [9]]
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), 0.25 + 3.0 * 0.75))
    with pytest.raises(ValueError, match="needs null_class"):
        sample_diffusion(fake, DDIMScheduler(10), torch.zeros(1, 1, 2, 2), 2, class_labels=torch.tensor([1]), guidance_scale=2.0)


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
