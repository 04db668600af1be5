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

from cmrsynth.generative import FlowMatchingObjective, ObjectivePrepareBatch
from tests.generative.helpers import ddpm_objective


def _batch(n=4, size=16):
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (n, size, size), generator=g)
    onehot = torch.nn.functional.one_hot(label, 4).permute(0, 3, 1, 2).float()
    return {"image": torch.rand((n, 1, size, size), generator=g) * 2 - 1, "label": onehot, "class": torch.tensor([0, 1, 2, 3][:n])}


def test_prepare_batch_noises_with_the_ddpm_formula():
    objective = ddpm_objective("epsilon")
    prep = ObjectivePrepareBatch(objective, mask_key="label", class_key="class", seed=7)
    batch = _batch()
    x_t, target, args, kwargs = prep(batch)
    prep.reset()
    noise, t = prep.get_noise(batch["image"]), prep.get_timesteps(batch["image"])
    abar = objective.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * batch["image"] + (1 - abar).sqrt() * noise)  # Ho et al. Eq. (4)
    torch.testing.assert_close(target, noise)
    assert args == () and set(kwargs) == {"timesteps", "mask", "class_labels"}
    torch.testing.assert_close(kwargs["timesteps"], t)
    torch.testing.assert_close(kwargs["mask"], batch["label"])


def test_prepare_batch_of_flow_matching_gives_the_velocity_target_and_scaled_time():
    prep = ObjectivePrepareBatch(FlowMatchingObjective(), mask_key="label", seed=7)
    batch = _batch()
    x_t, target, _, kwargs = prep(batch)
    prep.reset()
    noise, t = prep.get_noise(batch["image"]), prep.get_timesteps(batch["image"])
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, tt * batch["image"] + (1 - tt) * noise)
    torch.testing.assert_close(target, batch["image"] - noise)
    torch.testing.assert_close(kwargs["timesteps"], (1 - t) * 1000)


def test_exact_ot_keeps_each_mask_with_its_image():
    prep = ObjectivePrepareBatch(FlowMatchingObjective(coupling="exact_ot"), mask_key="label", seed=7)
    batch = _batch()
    x_t, target, _, kwargs = prep(batch)
    torch.testing.assert_close(kwargs["mask"], batch["label"])  # only the noise is re-paired
    one_minus_t = (kwargs["timesteps"] / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t + one_minus_t * target, batch["image"])  # each x_t still lies on its own image's path


def test_prepare_batch_strips_metatensor():
    from monai.data import MetaTensor

    x_t, target, _, kw = ObjectivePrepareBatch(ddpm_objective(steps=10), mask_key="label")({k: MetaTensor(v) for k, v in _batch().items()})
    assert all(type(x) is torch.Tensor for x in (x_t, target, kw["mask"]))


def test_seeded_prepare_batch_repeats_after_reset_and_differs_without_seed():
    prep = ObjectivePrepareBatch(ddpm_objective(), seed=3)
    a = prep(_batch())[0]
    prep.reset()
    torch.testing.assert_close(prep(_batch())[0], a)
    free = ObjectivePrepareBatch(ddpm_objective())
    assert not torch.equal(free(_batch())[0], free(_batch())[0])


def test_condition_dropout_drops_class_and_mask_together():
    prep = ObjectivePrepareBatch(ddpm_objective(), mask_key="label", class_key="class", condition_dropout=0.5,
                                 null_class=10, seed=0)
    batch = {k: v.repeat(16, *([1] * (v.dim() - 1))) for k, v in _batch().items()}
    _, _, _, kw = prep(batch)
    dropped = kw["class_labels"] == 10
    assert 0 < dropped.sum() < len(dropped)
    assert (kw["mask"][dropped] == 0).all() and (kw["mask"][~dropped].sum((1, 2, 3)) > 0).all()


def test_prepare_batch_errors():
    with pytest.raises(ValueError, match="condition_dropout must be in \\[0, 1\\), got 1.5"):
        ObjectivePrepareBatch(ddpm_objective(), condition_dropout=1.5)
    with pytest.raises(ValueError, match="needs null_class"):
        ObjectivePrepareBatch(ddpm_objective(), class_key="class", condition_dropout=0.1)
