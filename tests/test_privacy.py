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

from cmrsynth.generative import Generator
from cmrsynth.metrics.privacy import (
    attack_metrics,
    calibrated_scores,
    cross_fitted_accuracy,
    leakage_report,
    loss_scores,
    mask_dice_nearest,
    midband_scores,
    nearest_distances,
    per_patient,
    pia_scores,
    release_gate,
    roc_auc,
    secmi_scores,
    slice_descriptors,
    tpr_at_fpr,
)
from tests.generative.helpers import OBJECTIVES, TargetOracle


def _images(n, seed):
    return torch.rand((n, 1, 16, 16), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def memoriser(train: torch.Tensor, objective) -> Generator:
    """A generator that memorised a training set: its x0 estimate is the training image nearest to x_t / alpha."""
    def nearest(x_t, t):
        alpha = objective.alpha_sigma(t)[0].reshape(-1, 1, 1, 1)
        return train[torch.cdist((x_t / alpha).flatten(1), train.flatten(1)).argmin(1)]

    return Generator(TargetOracle(objective, nearest), objective)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("attack", ["loss", "pia", "secmi", "midband"])
def test_attacks_catch_a_memorising_model_and_not_an_ignorant_one(attack, objective):
    run = {"loss": lambda m, x: loss_scores(m, x, 0.1), "pia": lambda m, x: pia_scores(m, x, 0.1),
           "secmi": lambda m, x: secmi_scores(m, x, level=0.05, interval=0.01),
           "midband": lambda m, x: midband_scores(m, x, 0.1)}[attack]
    members, non_members = _images(12, 0), _images(12, 1)
    memorising = memoriser(members, OBJECTIVES[objective]()).bind()
    assert roc_auc(run(memorising, members), run(memorising, non_members)) > 0.95
    ignorant = memoriser(_images(12, 2), OBJECTIVES[objective]()).bind()  # memorised other people
    assert abs(roc_auc(run(ignorant, members), run(ignorant, non_members)) - 0.5) < 0.3


def test_roc_statistics_on_known_scores():
    m, n = np.array([0.9, 0.8, 0.7, 0.2]), np.array([0.6, 0.5, 0.4, 0.1])
    assert roc_auc(m, n) == pytest.approx(13 / 16)
    assert tpr_at_fpr(m, n, 0.0) == 0.75 and tpr_at_fpr(m, n, 0.25) == 0.75 and tpr_at_fpr(m, n, 1.0) == 1.0
    assert roc_auc(m, m) == 0.5
    assert cross_fitted_accuracy(np.arange(100, 110.0), np.arange(10.0)) == 1.0  # separated: any fitted cut works
    assert cross_fitted_accuracy(np.arange(10.0), np.arange(10.0)) <= 0.6  # no signal: near chance
    assert cross_fitted_accuracy(np.arange(10.0), np.arange(100, 110.0)) == 1.0  # inverted signal: still caught
    rng = np.random.default_rng(1)  # learning the direction must not bias the null: mean accuracy stays at chance
    null = [cross_fitted_accuracy(rng.normal(size=50), rng.normal(size=20), seed=i) for i in range(100)]
    assert abs(np.mean(null) - 0.5) < 0.03


def test_attack_metrics_have_intervals_and_need_enough_patients():
    rng = np.random.default_rng(0)
    members = per_patient(rng.normal(1, 1, 40), [f"m{i % 20}" for i in range(40)])
    non = per_patient(rng.normal(0, 1, 40), [f"n{i % 20}" for i in range(40)])
    out = attack_metrics(members, non, n_boot=200)
    assert out["members"] == 20 and out["non_members"] == 20
    for k in ("auc", "tpr_at_1pct_fpr", "tpr_at_10pct_fpr", "balanced_accuracy"):
        lo, hi = out[k]["ci95"]
        assert lo <= out[k]["value"] <= hi
    assert out["auc"]["value"] > 0.7
    with pytest.raises(ValueError, match="at least 2 member"):
        attack_metrics({"a": 1.0}, non)


def _confounded_scores(member_shift: float, seed: int = 0):
    """70 patients x 6 slices whose score is dominated by each slice's difficulty (visible in its descriptors),
    plus ``member_shift`` for the 50 members."""
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{i:02d}" for i in range(70)], 6)
    member = np.repeat(np.arange(70) < 50, 6)
    difficulty = rng.normal(0, 1, len(patients))
    descriptors = np.column_stack([difficulty + rng.normal(0, 0.1, len(patients)), rng.normal(0, 1, len(patients))])
    return patients, member, descriptors, -2 * difficulty + member_shift * member + rng.normal(0, 0.3, len(patients))


def _patient_auc(scores, patients, member):
    pp = per_patient(scores, patients)
    role = dict(zip(patients, member))
    return attack_metrics({p: v for p, v in pp.items() if role[p]}, {p: v for p, v in pp.items() if not role[p]}, n_boot=50)


def test_difficulty_calibration_finds_a_signal_that_slice_difficulty_hides():
    patients, member, descriptors, scores = _confounded_scores(0.5)
    calibrated = calibrated_scores(scores, descriptors, ~member, patients)
    raw, cal = _patient_auc(scores, patients, member), _patient_auc(calibrated, patients, member)
    assert raw["auc"]["value"] < 0.8 and cal["auc"]["value"] > 0.95
    assert cal["tpr_at_1pct_fpr"]["value"] > raw["tpr_at_1pct_fpr"]["value"] + 0.3


def test_difficulty_calibration_invents_no_signal():
    """Without a member shift the calibrated attack stays near chance: non-members are never calibrated on
    themselves (a model fitted on a slice would pull its residual towards zero and fake a gap)."""
    aucs = []
    for seed in range(5):
        patients, member, descriptors, scores = _confounded_scores(0.0, seed)
        aucs.append(_patient_auc(calibrated_scores(scores, descriptors, ~member, patients), patients, member)["auc"]["value"])
    assert abs(np.mean(aucs) - 0.5) < 0.1


def test_slice_level_metrics_resample_patients():
    """Slices of one patient share that patient's effect: patient-level resampling gives the honest (wider) interval."""
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i:02d}" for i in range(70)], 6)
    member = np.repeat(np.arange(70) < 50, 6)
    scores = np.repeat(rng.normal(0, 1, 70), 6) + 0.5 * member + rng.normal(0, 0.2, len(patients))
    keys = [f"{p}#{i}" for i, p in enumerate(patients)]
    split = {r: {k: v for k, v, m in zip(keys, scores, member) if m == r} for r in (True, False)}
    out = attack_metrics(split[True], split[False], n_boot=200, groups=dict(zip(keys, patients)))
    assert (out["members"], out["non_members"], out["member_scores"], out["non_member_scores"]) == (50, 20, 300, 120)
    flat = attack_metrics(split[True], split[False], n_boot=200)  # slices as if independent: too narrow an interval
    width = lambda o: o["auc"]["ci95"][1] - o["auc"]["ci95"][0]  # noqa: E731
    assert width(out) > 1.5 * width(flat)
    assert out["tpr_at_0.1pct_fpr"]["value"] <= out["tpr_at_1pct_fpr"]["value"] <= out["tpr_at_10pct_fpr"]["value"]


def test_slice_descriptors_describe_masks_and_images():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 4, (5, 16, 16))
    assert slice_descriptors(masks).shape == (5, 4)  # RV, MYO, LV shares and boundary length
    both = slice_descriptors(masks, rng.normal(0, 1, (5, 16, 16)))
    assert both.shape == (5, 10) and np.isfinite(both).all()


def test_planted_copies_are_flagged_and_honest_samples_pass():
    rng = np.random.default_rng(0)
    train, holdout, honest = (rng.normal(0, 1, (n, 8, 8)) for n in (200, 100, 100))
    planted = train[:10] + rng.normal(0, 0.01, (10, 8, 8))
    synthetic = np.concatenate([honest, planted])
    report = leakage_report(nearest_distances(synthetic, train), nearest_distances(holdout, train), quantile=0.01)
    keep = release_gate(nearest_distances(synthetic, train), report["threshold"])
    assert not keep[100:].any()  # sensitivity: every planted copy removed
    assert keep[:100].mean() >= 0.95  # specificity: honest samples kept
    assert report["near_copies"] >= 10 and report["nndr_median_synthetic"] < report["nndr_median_holdout"]


def test_nearest_distances_exclude_self_and_check_sizes():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = nearest_distances(x, x, exclude_self=True)
    assert d[0, 0] == pytest.approx(4.0) and d[0, 1] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="differ in size"):
        nearest_distances(x, np.zeros((2, 5)))


def test_mask_dice_nearest_finds_copies():
    train = np.zeros((3, 8, 8), np.int64)
    train[0, 2:6, 2:6] = 3
    train[1, 1:4, 1:4] = 1
    syn = np.stack([train[0], np.zeros((8, 8), np.int64)])
    syn[1, 5:8, 5:8] = 2
    dice = mask_dice_nearest(syn, train)
    assert dice[0] == pytest.approx(1.0) and dice[1] < 0.1
