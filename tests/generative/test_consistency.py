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
import math

import pytest
import torch
import torch.nn.functional as F

from cmrsynth.generative import (ConsistencyInferer, ConsistencyPrepareBatch, FlowMatchingObjective, Generator,
                                 PseudoHuberLoss, TeacherSolutionPrepareBatch, consistency_function, get_sampler,
                                 load_teacher, pseudo_huber, target_network)
from tests.generative.helpers import TargetOracle, ddpm_objective, tiny_generator


def _conditions(n=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = F.one_hot(torch.randint(0, 4, (n, size, size), generator=g), 4).permute(0, 3, 1, 2).float()
    return {"mask": mask, "class_labels": torch.zeros(n, dtype=torch.long)}


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon"])
def test_the_teacher_step_is_one_step_of_the_generators_ddim_sampler(kind):
    teacher = tiny_generator(ddpm_objective(kind, steps=100), groups=["NOR"])
    prepare = ConsistencyPrepareBatch(teacher.objective, teacher, None, steps=5)
    x, conditions = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)), _conditions()
    model = teacher.bind(conditions["mask"], conditions["class_labels"])
    for n in range(5):  # the last step lands on the clean end (t = -1)
        expected = get_sampler("ddim")(model, x, prepare.times[n:n + 2])
        torch.testing.assert_close(prepare.teacher_step(x, torch.full((3,), n), conditions), expected)
    mixed = prepare.teacher_step(x, torch.tensor([0, 2, 4]), conditions)  # each sample on its own interval
    second = teacher.bind(conditions["mask"][1:2], conditions["class_labels"][1:2])
    torch.testing.assert_close(mixed[1:2], get_sampler("ddim")(second, x[1:2], prepare.times[2:4]))


def test_the_validation_reference_is_the_teachers_own_n_step_sample_from_each_start():
    teacher = tiny_generator(ddpm_objective(steps=100))
    prepare = TeacherSolutionPrepareBatch(teacher.objective, teacher, steps=4, mask_key="label", seed=3)
    conditions = _conditions(2)
    model = teacher.bind(conditions["mask"])
    noise, x0 = torch.randn(2, 1, 16, 16), torch.rand(2, 1, 16, 16) * 2 - 1
    x_t, reference, _, kwargs = prepare({"image": x0, "label": conditions["mask"]})
    n = [int((prepare.times == t).nonzero()) for t in kwargs["times"]]
    for i in range(2):
        expected = get_sampler("ddim")(teacher.bind(conditions["mask"][i:i + 1]), x_t[i:i + 1], prepare.times[n[i]:])
        torch.testing.assert_close(reference[i:i + 1], expected)
    start = teacher.objective.add_noise(x0, noise, torch.full((2,), int(prepare.times[0])))
    from_noise = prepare.teacher_solution(start, torch.zeros(2, dtype=torch.long), conditions)
    torch.testing.assert_close(from_noise, get_sampler("ddim")(model, start, teacher.objective.time_grid(4)))


def test_validation_references_are_kept_for_the_same_batch_and_redrawn_for_another():
    teacher = tiny_generator(ddpm_objective(steps=100), in_channels=1, mask_mode="none")
    prepare = TeacherSolutionPrepareBatch(teacher.objective, teacher, steps=3, seed=0)
    batch = {"image": torch.rand(2, 1, 16, 16)}
    calls = []
    solve = prepare.teacher_solution
    prepare.teacher_solution = lambda *a: calls.append(1) or solve(*a)
    first = prepare(batch)
    prepare.reset()  # what the evaluator's next run does
    again = prepare(batch)
    assert len(calls) == 1 and torch.equal(first[1], again[1])
    prepare.reset()
    other = prepare({"image": torch.rand(2, 1, 16, 16)})
    assert len(calls) == 2 and not torch.equal(other[1], first[1])


def test_the_loss_is_zero_when_student_target_and_teacher_agree_on_one_trajectory():
    """An oracle whose clean sample is always x*: every DDIM step stays on the ray through x*, and the consistency
    function is x* everywhere, so student = target = teacher gives a zero loss at every interval; a student one
    pixel value off pays sqrt(d * 0.1^2 + c^2) - c."""
    objective = ddpm_objective(steps=100)
    x_star = torch.rand(1, 1, 16, 16) - 0.5
    oracle = TargetOracle(objective, lambda x, t: x_star.expand_as(x))
    teacher = Generator(oracle, objective, image_size=16)
    prepare = ConsistencyPrepareBatch(objective, teacher, oracle, steps=5, seed=0)
    x_t, target, _, kwargs = prepare({"image": torch.rand(64, 1, 16, 16)})
    assert set(kwargs["times"].tolist()) == set(prepare.times[:-1].tolist())  # every interval, the last included
    torch.testing.assert_close(target, x_star.expand_as(target), atol=1e-4, rtol=0)
    inferer, loss = ConsistencyInferer(objective), PseudoHuberLoss()
    assert loss(inferer(x_t, oracle, **kwargs), target).item() < 1e-6
    off = TargetOracle(objective, lambda x, t: x_star.expand_as(x) + 0.1)
    c = 0.00054 * 16
    assert loss(inferer(x_t, off, **kwargs), target).item() == pytest.approx(math.sqrt(256 * 0.01 + c**2) - c, rel=1e-3)


def test_consistency_distillation_teaches_one_step_what_the_teacher_needs_ten_for():
    """A few training steps on the teacher's own samples move the student's single DDIM step onto the teacher's
    10-step samples from the same noise (never shown to it)."""
    teacher = tiny_generator(ddpm_objective(), in_channels=1, mask_mode="none")  # T = 1000: x_T is noise alone
    g = torch.Generator().manual_seed(0)
    noise, sample, _ = teacher.sample_latent(32, num_inference_steps=10, generator=g)
    data = teacher.sample_latent(64, num_inference_steps=10, generator=g)[1]
    student = copy.deepcopy(teacher)
    teacher.network.requires_grad_(False)
    target = target_network(teacher, decay=0.9)
    prepare = ConsistencyPrepareBatch(teacher.objective, teacher, target, steps=10, seed=0)
    inferer, loss_fn = ConsistencyInferer(teacher.objective), PseudoHuberLoss()

    def one_step() -> float:
        return F.mse_loss(get_sampler("ddim")(student.bind(), noise, teacher.objective.time_grid(1)), sample).item()

    before = one_step()
    optimizer = torch.optim.Adam(student.network.parameters(), 3e-3)
    for _ in range(100):
        x_t, y, _, kwargs = prepare({"image": data[torch.randint(0, 64, (16,), generator=g)]})
        loss = loss_fn(inferer(x_t, student.network, **kwargs), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        target.update_parameters(student.network)
    after = one_step()
    assert after < 0.5 * before, (before, after)


def test_the_consistency_function_is_the_identity_at_the_clean_end_for_every_prediction_type():
    x, out = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for kind in ("v_prediction", "epsilon", "sample"):
        objective = ddpm_objective(kind, steps=100)
        torch.testing.assert_close(consistency_function(objective, out, x, torch.tensor([-1, -1])), x)
        torch.testing.assert_close(consistency_function(objective, out, x, torch.tensor([50, 50])),
                                   objective.predict(out, x, torch.tensor([50, 50]))[1])
    flow = FlowMatchingObjective()
    torch.testing.assert_close(consistency_function(flow, out, x, torch.tensor([1.0, 1.0])), x)


def test_pseudo_huber_matches_its_formula_and_refuses_a_bad_scale():
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([3.0, 0.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    c = 0.00054 * 2  # d = 4
    torch.testing.assert_close(pseudo_huber(x, y), torch.tensor([math.sqrt(36 + c**2) - c, 0.0]))
    torch.testing.assert_close(pseudo_huber(x, y, c=1.0), torch.tensor([math.sqrt(37) - 1, 0.0]))
    with pytest.raises(ValueError, match=r"scale c must be > 0 .* got -1"):
        PseudoHuberLoss(c=-1)


def test_the_target_starts_as_the_teacher_and_averages_from_its_first_update(tmp_path):
    generator = tiny_generator(ddpm_objective(steps=100))
    path = tmp_path / "teacher.pt"
    trained = copy.deepcopy(generator.network)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    torch.save({"ema": trained.state_dict(), "card": generator.card.state_dict()}, path)
    teacher = load_teacher(generator, path)
    w = next(generator.network.parameters())
    assert not torch.equal(next(teacher.network.parameters()), w)  # the generator is left untouched
    assert not any(p.requires_grad for p in teacher.network.parameters())
    target = target_network(teacher, decay=0.9)
    t0 = next(target.parameters()).clone()
    torch.testing.assert_close(t0, next(teacher.network.parameters()))
    target.update_parameters(generator.network)
    torch.testing.assert_close(next(target.parameters()), 0.9 * t0 + 0.1 * w)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\), got 1.0"):
        target_network(teacher, decay=1.0)


def test_a_teacher_of_another_objective_and_a_grid_beyond_the_schedule_are_refused():
    teacher = tiny_generator(FlowMatchingObjective())
    with pytest.raises(ValueError, match=r"teacher's objective \{'objective': 'flow_matching'.* differs from the student's"):
        ConsistencyPrepareBatch(ddpm_objective(), teacher, None)
    teacher = tiny_generator(ddpm_objective(steps=100))
    with pytest.raises(ValueError, match=r"steps must be in \[1, 100\] for this objective, got 200"):
        ConsistencyPrepareBatch(teacher.objective, teacher, None, steps=200)
    with pytest.raises(ValueError, match="needs a target network"):
        ConsistencyPrepareBatch(teacher.objective, teacher, None, steps=2, mask_key="label")(
            {"image": torch.zeros(1, 1, 16, 16), "label": _conditions(1)["mask"]})
