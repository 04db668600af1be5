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

from cmrsynth.masks import (mean_pairwise_dice, pairwise_dice, plausibility, postprocess_mask, shape_distances, shape_stats,
                            slice_level_of)
from tests.conftest import heart_mask


def test_clean_heart_is_plausible():
    assert plausibility(heart_mask()) == {"not_empty": True, "lv_walled": True, "rv_beside_myo": True,
                                      "whole_structures": True, "plausible": True}


@pytest.mark.parametrize(
    "damage, failed",
    [
        (lambda m: np.where(m == 2, 0, m), "lv_walled"),  # no myocardium around the LV
        (lambda m: np.where((m == 2) & (np.arange(48)[None, :] > 28), 0, m), "lv_walled"),  # a third of the wall open
        (lambda m: np.where(m == 1, 0, m) + np.pad(np.ones((3, 3), np.uint8), ((0, 45), (0, 45))), "rv_beside_myo"),
        (lambda m: m + np.pad(np.full((6, 6), 3, np.uint8), ((1, 41), (41, 1))) * (m == 0), "whole_structures"),
        (np.zeros_like, "not_empty"),
    ],
)
def test_each_check_can_fail(damage, failed):
    checks = plausibility(damage(heart_mask()).astype(np.uint8))
    assert not checks[failed] and not checks["plausible"]


def test_real_anatomy_passes():
    """A basal slice open to the outflow tract by a pixel, a slice with RV alone, partial-volume specks."""
    basal = heart_mask()
    basal[24, 24 + 8:24 + 12] = 0  # a one-pixel channel through the wall: the LV touches background there
    assert plausibility(basal)["lv_walled"]
    assert plausibility(np.where(heart_mask() == 1, 1, 0).astype(np.uint8))["plausible"]  # beyond the LV: RV alone
    speck = heart_mask()
    speck[0, 0] = 3
    assert plausibility(speck)["whole_structures"]


def test_postprocess_removes_fragments_and_fills_holes():
    m = heart_mask()
    m[0:6, 0:6] = 3  # stray LV fragment
    m[24, 24] = 0  # hole in the LV
    m[24, 24 + 9] = 0  # hole in the myocardium
    out = postprocess_mask(m)
    assert out[0, 0] == 0 and out[24, 24] == 3 and out[24, 33] == 2
    assert plausibility(out)["plausible"] and not plausibility(m)["plausible"]


def test_shape_stats_of_a_ring():
    stats = shape_stats(heart_mask(n=200, lv=30, wall=10, rv=False), spacing=0.5)
    assert stats["lv_area"] == pytest.approx(np.pi * 15**2, rel=0.03)
    assert stats["myo_thickness"] == pytest.approx(5.0, rel=0.05)
    assert stats["rv_lv_ratio"] == 0.0
    assert stats["lv_circularity"] == pytest.approx(1.0, abs=0.05)
    assert np.isnan(shape_stats(np.zeros((4, 4), np.uint8), 1.0)["myo_thickness"])
    ellipse = np.zeros((200, 200), np.uint8)
    x, y = np.mgrid[:200, :200] - 100
    ellipse[(x / 60) ** 2 + (y / 20) ** 2 < 1] = 3
    assert shape_stats(ellipse, 1.0)["lv_circularity"] == pytest.approx(0.663, abs=0.02)  # 4 pi ab / P² of a 3:1 ellipse


def test_shape_distances_grow_with_difference():
    real = [("NOR/ED", shape_stats(heart_mask(lv=8), 1.0)), ("NOR/ED", shape_stats(heart_mask(lv=9), 1.0))]
    same = shape_distances(real, real)
    far = shape_distances(real, [("NOR/ED", shape_stats(heart_mask(lv=14), 1.0))])
    assert same["NOR/ED"]["lv_area"] == 0.0
    assert far["NOR/ED"]["lv_area"] > 300 and far["all"]["n_generated"] == 1


def test_diversity_is_lower_for_a_varied_set():
    same = np.stack([heart_mask(lv=8)] * 3)
    varied = np.stack([heart_mask(lv=6), heart_mask(lv=9, rv=False), heart_mask(lv=12, wall=2)])
    assert mean_pairwise_dice(same) == pytest.approx(1.0)
    assert mean_pairwise_dice(varied) < 0.9 and np.isnan(mean_pairwise_dice(same[:1]))
    dice = pairwise_dice(varied, same[:1])
    assert dice.shape == (3, 1) and np.argmax(dice[:, 0]) == 1  # the LV-9 heart overlaps the LV-8 one most


def test_slice_level_reads_position_or_slice_position():
    assert [slice_level_of({"slice_position": p}) for p in (0.0, 0.5, 1.0)] == ["basal", "mid", "apical"]
    assert slice_level_of({"position": "mid", "slice_position": 0.0}) == "mid" and slice_level_of({}) == "unknown"
