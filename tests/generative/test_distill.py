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

import copy

import pytest
import torch
import torch.nn.functional as F

from cmrsynth.errors import CMRDataError
from cmrsynth.generative import CoupledPrepareBatch, FlowMatchingObjective, TeacherPairs, get_sampler, teacher_pairs
from tests.generative.helpers import ddpm_objective, tiny_generator


def _source(n=3, size=16):
    """Training items as the bundles' transforms give them: one-hot masks and class indices."""
    items = []
    for i in range(n):
        mask = torch.zeros(size, size, dtype=torch.long)
        mask[4:12, 4:12] = 1 + i % 3
        items.append({"label": F.one_hot(mask, 4).permute(2, 0, 1).float(), "class": torch.tensor([i % 2])})
    return items


def _teacher_file(generator, tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save({"ema": generator.network.state_dict(), "card": generator.card.state_dict()}, path)
    return path


def test_teacher_pairs_are_the_teachers_deterministic_samples(tmp_path):
    generator = tiny_generator(ddpm_objective(steps=100), groups=["NOR"])
    path = teacher_pairs(generator, _teacher_file(generator, tmp_path), tmp_path / "pairs.pt", _source(), num_pairs=5,
                         mask_key="label", class_key="class", num_inference_steps=4, batch_size=2)
    pairs = torch.load(path, weights_only=True)
    assert pairs["noise"].shape == pairs["sample"].shape == (5, 1, 16, 16) and pairs["noise"].dtype == torch.float16
    assert sorted(pairs["class"][:3].tolist()) == [0, 0, 1]  # every source item once before any repeats
    assert sorted(pairs["mask"][:3].amax((1, 2)).tolist()) == [1, 2, 3] and pairs["sampler"]["nfe"] == 4
    assert pairs["settings"]["teacher"] == "teacher.pt"  # the file name only, no local path
    mask = F.one_hot(pairs["mask"][:1].long(), 4).permute(0, 3, 1, 2).float()
    again = get_sampler("ddim")(generator.bind(mask, pairs["class"][:1]), pairs["noise"][:1].float(),
                                generator.objective.time_grid(4))
    torch.testing.assert_close(again, pairs["sample"][:1].float(), atol=2e-3, rtol=0)  # float16 storage


def test_teacher_pairs_refuse_a_stochastic_sampler_and_an_empty_source(tmp_path):
    generator = tiny_generator(ddpm_objective(steps=100))
    teacher = _teacher_file(generator, tmp_path)
    with pytest.raises(ValueError, match="deterministic"):
        teacher_pairs(generator, teacher, tmp_path / "p.pt", _source(), sampler="ddpm")
    with pytest.raises(CMRDataError, match=r"p.pt: no training \(or validation\) items"):
        teacher_pairs(generator, teacher, tmp_path / "p.pt", [])
    assert not (tmp_path / "p.pt").exists()


def test_validation_couplings_come_from_the_validation_conditions(tmp_path):
    generator = tiny_generator(ddpm_objective(steps=100), groups=["NOR"])
    held_out = [{**item, "label": torch.roll(item["label"], 3, dims=-1)} for item in _source(2)]  # other masks
    path = teacher_pairs(generator, _teacher_file(generator, tmp_path), tmp_path / "pairs.pt", _source(), num_pairs=6,
                         mask_key="label", class_key="class", num_inference_steps=2, validation_source=held_out,
                         validation_pairs=2)
    train, val = TeacherPairs(path, "training"), TeacherPairs(path, "validation")
    assert (len(train), len(val)) == (6, 2)
    seen = {tuple(train[i]["label"].flatten().tolist()) for i in range(6)}
    assert all(tuple(val[i]["label"].flatten().tolist()) not in seen for i in range(2))
    item = val[0]
    assert item["label"].shape == (4, 16, 16) and item["noise"].dtype == torch.float32 and "class" in item


def test_couplings_of_other_settings_are_refused_naming_the_file(tmp_path):
    generator = tiny_generator(ddpm_objective(steps=100))
    teacher, kw = _teacher_file(generator, tmp_path), dict(mask_key="label", num_inference_steps=2)
    teacher_pairs(generator, teacher, tmp_path / "pairs.pt", _source(), num_pairs=4, **kw)
    with pytest.raises(CMRDataError, match=r"pairs.pt: couplings were drawn with other settings \(num_pairs: 4 in the file, 8 now\)"):
        teacher_pairs(generator, teacher, tmp_path / "pairs.pt", _source(), num_pairs=8, **kw)


def test_coupled_batches_keep_the_teachers_noise_and_focus_on_the_sampling_levels():
    objective = FlowMatchingObjective(coupling="exact_ot")  # would re-pair independent noise
    x0, noise = torch.randn(64, 1, 8, 8), torch.randn(64, 1, 8, 8)
    prepare = CoupledPrepareBatch(objective, image_key="sample", focus_steps=(1, 2), focus_share=0.5, seed=0)
    x_t, target, _, conditions = prepare({"sample": x0, "noise": noise})
    torch.testing.assert_close(target, x0 - noise)  # u = x - z of each sample's own noise
    t = 1 - conditions["timesteps"] / objective.time_scale
    torch.testing.assert_close(x_t, t.view(-1, 1, 1, 1) * x0 + (1 - t.view(-1, 1, 1, 1)) * noise)
    focused = ((t - 0.0).abs() < 1e-6) | ((t - 0.5).abs() < 1e-6)
    assert 0.3 < focused.float().mean() < 0.7
    ddpm = CoupledPrepareBatch(ddpm_objective(), image_key="sample", focus_share=1.0, seed=0)
    assert set(ddpm({"sample": x0, "noise": noise})[3]["timesteps"].tolist()) == {999, 499}  # the trailing 1- and 2-step grid
    plain = CoupledPrepareBatch(objective, image_key="sample", focus_share=0.0, seed=0)
    t_plain = 1 - plain({"sample": x0, "noise": noise})[3]["timesteps"] / objective.time_scale
    assert (((t_plain - 0.5).abs() < 1e-6) | (t_plain.abs() < 1e-6)).sum() == 0


def _one_step_error(generator, noise, target):
    return F.mse_loss(get_sampler("ddim")(generator.bind(), noise, generator.objective.time_grid(1)), target).item()


def test_reflow_teaches_one_step_what_the_teacher_needs_twenty_for():
    """The student's single DDIM step moves onto the teacher's 20-step samples (the coupling it trained on)."""
    teacher = tiny_generator(ddpm_objective(), in_channels=1, mask_mode="none")  # T = 1000: x_T is noise alone
    g = torch.Generator().manual_seed(0)
    noise, sample, _ = teacher.sample_latent(32, num_inference_steps=20, generator=g)
    student = copy.deepcopy(teacher)
    before = _one_step_error(student, noise, sample)
    prepare = CoupledPrepareBatch(teacher.objective, image_key="sample", seed=0)
    optimizer = torch.optim.Adam(student.network.parameters(), 3e-3)
    for _ in range(200):
        idx = torch.randint(0, 32, (16,), generator=g)
        x_t, target, _, conditions = prepare({"sample": sample[idx], "noise": noise[idx]})
        loss = F.mse_loss(student.network(x_t, **conditions), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _one_step_error(student, noise, sample)
    assert after < 0.5 * before, (before, after)


def test_teacher_pairs_continue_an_unfinished_file_exactly(tmp_path):
    generator = tiny_generator(ddpm_objective(steps=100))
    teacher, kw = _teacher_file(generator, tmp_path), dict(num_pairs=6, mask_key="label", num_inference_steps=2, batch_size=2,
                                                           save_every=1)
    whole = torch.load(teacher_pairs(generator, teacher, tmp_path / "whole.pt", _source(), **kw), weights_only=True)
    assert not (tmp_path / "whole.pt.partial").exists()
    calls = []
    original = type(generator).sample_latent

    def crash_on_third_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    type(generator).sample_latent = crash_on_third_batch
    try:
        with pytest.raises(KeyboardInterrupt):
            teacher_pairs(generator, teacher, tmp_path / "resumed.pt", _source(), **kw)
    finally:
        type(generator).sample_latent = original
    assert (tmp_path / "resumed.pt.partial").is_file() and not (tmp_path / "resumed.pt").exists()
    resumed = torch.load(teacher_pairs(generator, teacher, tmp_path / "resumed.pt", _source(), **kw), weights_only=True)
    torch.testing.assert_close(resumed["sample"], whole["sample"])
    torch.testing.assert_close(resumed["noise"], whole["noise"])
