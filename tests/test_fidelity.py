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

import numpy as np
import pytest
import torch

from cmrsynth.metrics.fidelity import dice_per_structure, diversity, frechet_distance, kernel_distance, paired_metrics


def test_frechet_distance_of_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 3))
    b = rng.normal(0, 2, (4000, 3)) + np.array([1.0, 0, 0])
    # |mu|^2 + Tr(I + 4I - 2*2I) = 1 + 3
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.08)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (300, 8)), rng.normal(0, 1, (300, 8))
    same, _ = kernel_distance(a, b, subsets=10, subset_size=100)
    shifted, _ = kernel_distance(a, b + 1.0, subsets=10, subset_size=100)
    assert abs(same) < 0.05 < shifted


def test_feature_errors():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_distance(np.zeros((1, 3)), np.zeros((5, 3)))


def test_paired_metrics_identical_and_noisy():
    g = torch.Generator().manual_seed(0)
    real = torch.rand((4, 1, 64, 64), generator=g) * 2 - 1
    same = paired_metrics(real, real)
    assert same["ssim"] == pytest.approx(1.0) and same["ms_ssim"] == pytest.approx(1.0) and same["psnr"] > 60
    noisy = paired_metrics((real + 0.3 * torch.randn(real.shape, generator=g)).clamp(-1, 1), real)
    assert noisy["ssim"] < 0.9 and noisy["psnr"] < 25
    with pytest.raises(ValueError, match="differ in shape"):
        paired_metrics(real[:2], real)


def test_diversity_detects_collapse():
    g = torch.Generator().manual_seed(0)
    varied = torch.rand((10, 1, 64, 64), generator=g) * 2 - 1
    collapsed = varied[:1].repeat(10, 1, 1, 1)
    assert diversity(collapsed) == pytest.approx(1.0) and diversity(varied) < 0.5


def test_dice_per_structure():
    a = np.zeros((4, 4), np.uint8)
    a[:2] = 3
    b = a.copy()
    b[0] = 2
    d = dice_per_structure(b, a)
    assert d["lv"] == pytest.approx(2 * 4 / 12) and d["myo"] == 0.0 and np.isnan(d["rv"])


def _segmenter():
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    return DynUNet(2, 1, 4, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 16])


def test_pooled_features_take_the_bottleneck_and_separate_different_images():
    from cmrsynth.metrics.fidelity import pooled_features

    net = _segmenter()
    rng = np.random.default_rng(0)
    smooth = np.zeros((6, 16, 16), np.float32) + rng.normal(0, 0.01, (6, 16, 16)).astype(np.float32)
    noisy = rng.normal(0, 1, (6, 16, 16)).astype(np.float32)
    a, b = pooled_features(net, smooth), pooled_features(net, noisy)
    assert a.shape == (6, 16) and b.shape == (6, 16)
    np.testing.assert_allclose(pooled_features(net, smooth, batch_size=4), a, rtol=1e-5, atol=1e-6)  # batching-invariant
    assert frechet_distance(a, b) > 10 * frechet_distance(a, pooled_features(net, smooth + 1e-3))
    with pytest.raises(ValueError, match="no submodule 'encoder'"):
        pooled_features(net, smooth, layer="encoder")


class _FakeInception(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 299, 299)
        return x.float().mean((2, 3))


def test_torchscript_features_feed_uint8_rgb_and_name_a_missing_file(tmp_path):
    from cmrsynth.metrics.fidelity import torchscript_features

    path = tmp_path / "inception.pt"
    torch.jit.script(_FakeInception()).save(str(path))
    images = np.stack([np.full((16, 16), -1.0), np.full((16, 16), 1.0), np.zeros((16, 16))]).astype(np.float32)
    f = torchscript_features(str(path), images, batch_size=2)
    np.testing.assert_allclose(f[:, 0], [0.0, 255.0, 128.0], rtol=1e-5)  # [-1, 1] -> 0..255, three equal channels
    with pytest.raises(FileNotFoundError, match="missing.pt: Inception TorchScript file not found"):
        torchscript_features(str(tmp_path / "missing.pt"), images)


def test_score_generator_separates_real_from_noise():
    from cmrsynth.segment import score_generator

    rng = np.random.default_rng(0)
    masks = np.zeros((12, 32, 32), np.uint8)  # MS-SSIM (diversity) needs more than 24 pixels a side
    masks[:, 8:24, 8:24] = 2
    masks[:, 12:20, 12:20] = 3
    real = (masks / 3.0 * 2 - 1 + rng.normal(0, 0.05, masks.shape)).astype(np.float32)
    net = _segmenter()
    same = score_generator(net, real, masks, real.copy(), masks, paired_real=real)
    noise = score_generator(net, real, masks, rng.uniform(-1, 1, real.shape).astype(np.float32), masks, paired_real=real)
    assert same["fd_seg"] < 1e-6 < noise["fd_seg"]
    assert same["paired"]["ssim"] == pytest.approx(1.0, abs=1e-4) and noise["paired"]["ssim"] < 0.5
    assert set(same["mask_faithfulness"]) == {"rv", "myo", "lv"} and same["mask_faithfulness"] == same["real_dice"]
    assert "paired" not in score_generator(net, real, masks, real, masks)
