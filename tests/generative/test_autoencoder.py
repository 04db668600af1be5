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
from ignite.engine import Events
from monai.engines import AdversarialTrainer
from monai.networks.nets import PatchDiscriminator

from cmrsynth.engines import ResumableCheckpoint
from cmrsynth.generative import (DiscriminatorAdversarialLoss, GeneratorAdversarialLoss, ReconstructionKLLoss,
                                 RecordTotalLoss)
from tests.generative.test_codecs import _slices, tiny_autoencoder


def test_reconstruction_loss_is_l1_plus_weighted_kl_and_perceptual():
    ae = tiny_autoencoder().train()
    x = _slices()
    recon = ae(x)
    l1 = (recon - x).abs().mean()
    torch.testing.assert_close(ReconstructionKLLoss(ae, kl_weight=0.0)(recon, x), l1)
    torch.testing.assert_close(ReconstructionKLLoss(ae, kl_weight=0.5)(recon, x), l1 + 0.5 * ae.kl)
    fake_perceptual = lambda a, b: torch.tensor(2.0)  # noqa: E731
    torch.testing.assert_close(ReconstructionKLLoss(ae, 0.0, fake_perceptual, 0.25)(recon, x), l1 + 0.5)


def test_adversarial_term_is_off_during_warmup_and_follows_the_trainer():
    from ignite.engine import Engine

    loss = GeneratorAdversarialLoss(weight=0.1, warmup_iterations=2)
    engine = Engine(lambda e, b: None)
    loss.attach(engine)
    logits = [torch.zeros(2, 8), torch.zeros(2, 1, 4, 4)]  # a PatchDiscriminator's features, logits last
    seen = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(loss(logits).item()))
    engine.run([0] * 4, max_epochs=1)
    assert seen[:2] == [0.0, 0.0] and seen[2] == seen[3] == pytest.approx(0.1)  # least squares: (0 - 1)^2


def test_discriminator_loss_is_low_when_it_tells_real_from_reconstructed():
    d = DiscriminatorAdversarialLoss()
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert d([ones], [zeros]).item() == 0.0 and d([zeros], [ones]).item() == pytest.approx(1.0)


def _adversarial_trainer(ae, disc, max_epochs, handlers):
    x = _slices(4)
    data = [{"image": x, "label": x}] * 2
    return AdversarialTrainer(
        device="cpu", max_epochs=max_epochs, train_data_loader=data, g_network=ae, g_optimizer=torch.optim.Adam(ae.parameters(), 1e-3),
        g_loss_function=handlers[0], recon_loss_function=ReconstructionKLLoss(ae), d_network=disc,
        d_optimizer=torch.optim.Adam(disc.parameters(), 1e-3), d_loss_function=DiscriminatorAdversarialLoss(), train_handlers=handlers)


def test_autoencoder_trainer_reports_its_loss_and_resumes_with_its_live_networks(tmp_path):
    """MONAI's AdversarialTrainer lists its networks in the engine state dict; a resume must not swap the trained
    objects for unpickled copies that the checkpoint handler and optimizers no longer see."""
    ae, disc = tiny_autoencoder(), PatchDiscriminator(2, num_layers_d=2, channels=8, in_channels=1, out_channels=1)
    gen_loss = GeneratorAdversarialLoss(0.01, warmup_iterations=1)
    losses = []
    first = _adversarial_trainer(ae, disc, 1, [gen_loss, RecordTotalLoss(), ResumableCheckpoint(tmp_path, {"autoencoder": ae, "discriminator": disc})])
    first.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output[0]["loss"]))
    first.run()
    assert len(losses) == 2 and all(0 < float(v) < 10 for v in losses)
    assert "g_network" not in torch.load(tmp_path / "checkpoint_final.pt", weights_only=False)["trainer"]
    ae2, disc2 = tiny_autoencoder(seed=5), PatchDiscriminator(2, num_layers_d=2, channels=8, in_channels=1, out_channels=1)
    second = _adversarial_trainer(ae2, disc2, 2, [GeneratorAdversarialLoss(0.01, 1), RecordTotalLoss(),
                                                  ResumableCheckpoint(tmp_path, {"autoencoder": ae2, "discriminator": disc2})])
    before = []
    second.add_event_handler(Events.EPOCH_STARTED, lambda e: before.append(ae2.decoder.blocks[0].conv.weight.detach().clone()))
    second.run()
    assert second.state.iteration == 4 and second.state.g_network is ae2 and second.state.d_network is disc2
    torch.testing.assert_close(before[0], ae.decoder.blocks[0].conv.weight)
