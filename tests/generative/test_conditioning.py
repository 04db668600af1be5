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

from cmrsynth.generative import ClassIndex, ConditionalDenoiser, guided
from cmrsynth.generative.conditioning import _concat


def _unet(in_channels=5, out_channels=1, classes=None):
    return DiffusionModelUNet(2, in_channels, out_channels, channels=(8, 8), attention_levels=(False, False),
                              num_res_blocks=1, norm_num_groups=8, num_class_embeds=classes)


def _onehot(n=3, size=16):
    label = torch.randint(0, 4, (n, size, size), generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.one_hot(label, 4).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("mode", ["concat", "spade", "none"])
def test_denoiser_modes_shapes(mode):
    if mode == "spade":
        net = SPADEDiffusionModelUNet(2, 1, 1, label_nc=4, channels=(8, 8), attention_levels=(False, False),
                                      num_res_blocks=1, norm_num_groups=8, num_class_embeds=3)
    else:
        net = _unet(5 if mode == "concat" else 1, classes=3)
    out = ConditionalDenoiser(net, mode)(torch.zeros(3, 1, 16, 16), torch.tensor([1, 500, 999]), mask=_onehot(),
                                         class_labels=torch.tensor([0, 1, 2]))
    assert out.shape == (3, 1, 16, 16)


def test_denoiser_errors():
    with pytest.raises(ValueError, match=r"unknown mask_mode 'film'; allowed: \['concat', 'spade', 'none'\]"):
        ConditionalDenoiser(_unet(), "film")
    with pytest.raises(ValueError, match="does not fit a DiffusionModelUNet"):
        ConditionalDenoiser(_unet(), "spade")
    with pytest.raises(ValueError, match="needs a mask"):
        ConditionalDenoiser(_unet(), "concat")(torch.zeros(1, 1, 16, 16), torch.tensor([1]))


def test_guidance_combines_conditional_and_unconditional():
    calls = []

    def fake(x, t, mask=None, class_labels=None):
        calls.append((class_labels.tolist(), mask.sum().item()))
        return torch.full_like(x, 1.0 if class_labels[0] != 9 else 0.25)

    out = guided(fake, torch.zeros(1, 1, 2, 2), torch.tensor([5]), torch.ones(1, 4, 2, 2), torch.tensor([2]), 3.0, 9)
    assert calls == [([2], 16.0), ([9], 0.0)]  # the unconditional branch: null class and an all-zero mask
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), 0.25 + 3.0 * 0.75))


def test_class_index_is_defined_once():
    classes = ClassIndex(["NOR", "HCM"], ["ED", "ES"])
    assert classes.num_classes == 4 and classes.null_class == 4
    assert classes.index("HCM", "ES") == 3 and classes.index("DCM", "ED") == 4 and classes.index("NOR", None) == 4
    plan = classes.plan(2)
    assert len(plan) == 8 and plan[3] == {"group": "HCM", "phase": "ES", "position": None, "class": 3}
    assert classes.labels([{"group": "NOR", "phase": "ES"}, {"group": "RV"}]).tolist() == [1, 4]
    none = ClassIndex([])
    assert none.num_classes == 0 and none.null_class is None and none.labels([{}]) is None
    assert none.plan(3) == [{"group": None, "phase": None, "position": None, "class": None}] * 3


def test_class_index_with_slice_positions():
    classes = ClassIndex(["NOR", "HCM"], ["ED", "ES"], ["basal", "mid", "apical"])
    assert classes.num_classes == 12 and classes.null_class == 12
    assert classes.index("NOR", "ED", "basal") == 0 and classes.index("HCM", "ES", "apical") == 11
    assert classes.index("NOR", "ED", None) == 12  # an unknown position is unconditional, like an unknown group
    # slice_position 0 is the basal slice, 1 the apical one; equal thirds
    entries = [{"group": "NOR", "phase": "ES", "slice_position": p} for p in (0.0, 0.3333, 0.5, 0.6667, 1.0)]
    assert classes.labels(entries).tolist() == [3, 3, 4, 5, 5]
    assert classes.index_of({"group": "HCM", "phase": "ED", "position": "mid"}) == 7
    plan = classes.plan(1)
    assert len(plan) == 12 and [c["class"] for c in plan] == list(range(12)) and plan[5]["position"] == "apical"
    apical_hcm = classes.plan(2, only={"position": ["apical"], "group": ["HCM"]})
    assert [c["class"] for c in apical_hcm] == [8, 11, 8, 11]
    with pytest.raises(ValueError, match=r"position=\['apex'\].*allowed: \['basal', 'mid', 'apical'\]"):
        classes.plan(1, only={"position": ["apex"]})
    with pytest.raises(ValueError, match="allowed: keys"):
        classes.plan(1, only={"size": ["big"]})


def test_concat_resizes_a_full_resolution_mask_to_a_latent_grid():
    seen = {}

    def record(x, t, class_labels=None):
        seen["input"] = x
        return x[:, :1]

    mask = _onehot(2, 16)
    _concat(record, torch.zeros(2, 1, 4, 4), torch.tensor([1, 2]), mask, None)  # a 4x4 latent, a 16x16 mask
    latent_mask = seen["input"][:, 1:]
    assert latent_mask.shape == (2, 4, 4, 4)
    torch.testing.assert_close(latent_mask.sum(1), torch.ones(2, 4, 4))  # shares of each structure per cell
    torch.testing.assert_close(latent_mask[:, :, 0, 0], mask[:, :, :4, :4].mean((-2, -1)))
