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
