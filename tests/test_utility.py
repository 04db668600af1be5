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

from cmrsynth.metrics.utility import (
    bootstrap_ci,
    clinical_indices,
    evaluate_patients,
    restack,
    structure_volumes_ml,
    volume_scores,
)


def _volume(r_lv=6, n=32, slices=4, shift=0):
    x, y = np.mgrid[:n, :n] - n / 2
    r = np.hypot(x - shift, y)
    v = np.zeros((n, n, slices), np.uint8)
    ring = (r < r_lv + 3)
    v[ring] = 2
    v[r < r_lv] = 3
    v[(np.hypot(x + r_lv + 7, y) < 4) & ~ring] = 1
    return v


def test_perfect_prediction_scores_one_and_zero():
    v = _volume()
    s = volume_scores(v, v, (1.5, 1.5, 10.0))
    assert s["dice_lv"] == s["dice_myo"] == s["dice_rv"] == 1.0
    assert s["hd95_lv"] == 0.0


def test_hausdorff_is_in_millimetres():
    a, b = _volume(), _volume(shift=2)
    assert volume_scores(b, a, (1.0, 1.0, 10.0))["hd95_lv"] == pytest.approx(2.0, abs=0.5)
    assert volume_scores(b, a, (2.0, 2.0, 10.0))["hd95_lv"] == pytest.approx(4.0, abs=1.0)
    assert volume_scores(b, a, (1.0, 1.0, 10.0))["dice_lv"] < 1


def test_clinical_indices():
    ed, es = _volume(r_lv=8), _volume(r_lv=5)
    sp = (1.0, 1.0, 10.0)
    c = clinical_indices(ed, es, sp, sp)
    assert c["lv_edv"] == pytest.approx(structure_volumes_ml(ed, sp)["lv"])
    assert c["lv_ef"] == pytest.approx(100 * (1 - (es == 3).sum() / (ed == 3).sum()))
    assert c["myo_mass"] == pytest.approx((ed == 2).sum() * 10 / 1000 * 1.05)


def test_restack_orders_slices():
    slices = [{"patient": "p", "phase": "ED", "slice": k, "spacing": [1, 1, 10], "pred": np.full((2, 2), k),
               "label": np.full((2, 2), k)} for k in (2, 0, 1)]
    v = restack(slices)[("p", "ED")]
    assert v["pred"].shape == (2, 2, 3) and v["pred"][0, 0].tolist() == [0, 1, 2]


def test_evaluate_patients_summary_and_errors():
    slices = []
    for p, shift in (("a", 0), ("b", 1), ("c", 2)):
        for phase, r in (("ED", 8), ("ES", 5)):
            gt, pred = _volume(r_lv=r), _volume(r_lv=r, shift=shift)
            for k in range(gt.shape[2]):
                slices.append({"patient": p, "phase": phase, "slice": k, "spacing": [1.5, 1.5, 10],
                               "pred": pred[:, :, k], "label": gt[:, :, k]})
    result = evaluate_patients(slices)
    assert result["per_patient"]["a"]["ED/dice_lv"] == 1.0 and result["per_patient"]["c"]["ED/dice_lv"] < 1.0
    s = result["summary"]["ED/dice_lv"]
    assert s["n"] == 3 and s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    assert result["per_patient"]["a"]["lv_ef_error"] == pytest.approx(0.0)


def test_bootstrap_interval_narrows_with_more_patients():
    rng = np.random.default_rng(0)
    few, many = bootstrap_ci(rng.normal(0.8, 0.1, 5)), bootstrap_ci(rng.normal(0.8, 0.1, 200))
    assert (many[1] - many[0]) < (few[1] - few[0])
    assert np.isnan(bootstrap_ci([np.nan])[0])
