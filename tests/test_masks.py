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

from cmrsynth.masks import plausibility, postprocess_mask, shape_distances, shape_stats


def _heart(n=48, lv=8, wall=4, rv=True):
    x, y = np.mgrid[:n, :n] - n / 2
    r = np.hypot(x, y)
    m = np.zeros((n, n), np.uint8)
    m[r < lv + wall] = 2
    m[r < lv] = 3
    if rv:
        m[(np.hypot(x + lv + wall + 4, y) < 6) & (m == 0)] = 1
    return m


def test_clean_heart_is_plausible():
    assert plausibility(_heart()) == {"not_empty": True, "lv_enclosed": True, "rv_beside_myo": True,
                                      "single_components": True, "plausible": True}


@pytest.mark.parametrize(
    "damage, failed",
    [
        (lambda m: np.where(m == 2, 0, m), "lv_enclosed"),  # no myocardium around the LV
        (lambda m: np.where(m == 1, 0, m) + np.pad(np.ones((3, 3), np.uint8), ((0, 45), (0, 45))), "rv_beside_myo"),
        (lambda m: m + np.pad(np.full((2, 2), 3, np.uint8), ((1, 45), (45, 1))) * (m == 0), "single_components"),
        (np.zeros_like, "not_empty"),
    ],
)
def test_each_check_can_fail(damage, failed):
    checks = plausibility(damage(_heart()).astype(np.uint8))
    assert not checks[failed] and not checks["plausible"]


def test_postprocess_removes_fragments_and_fills_holes():
    m = _heart()
    m[0:2, 0:2] = 3  # stray LV fragment
    m[24, 24] = 0  # hole in the LV
    m[24, 24 + 9] = 0  # hole in the myocardium
    out = postprocess_mask(m)
    assert out[0, 0] == 0 and out[24, 24] == 3 and out[24, 33] == 2
    assert plausibility(out)["plausible"] and not plausibility(m)["plausible"]


def test_shape_stats_of_a_ring():
    stats = shape_stats(_heart(n=200, lv=30, wall=10, rv=False), spacing=0.5)
    assert stats["lv_area"] == pytest.approx(np.pi * 15**2, rel=0.03)
    assert stats["myo_thickness"] == pytest.approx(5.0, rel=0.05)
    assert stats["rv_lv_ratio"] == 0.0
    assert np.isnan(shape_stats(np.zeros((4, 4), np.uint8), 1.0)["myo_thickness"])


def test_shape_distances_grow_with_difference():
    real = [("NOR/ED", shape_stats(_heart(lv=8), 1.0)), ("NOR/ED", shape_stats(_heart(lv=9), 1.0))]
    same = shape_distances(real, real)
    far = shape_distances(real, [("NOR/ED", shape_stats(_heart(lv=14), 1.0))])
    assert same["NOR/ED"]["lv_area"] == 0.0
    assert far["NOR/ED"]["lv_area"] > 300 and far["all"]["n_generated"] == 1
