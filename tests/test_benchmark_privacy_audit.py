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
"""scripts/benchmark_privacy_audit.py's privacy aim and scripts/screen_privacy_seeds.py's seed table."""

from __future__ import annotations

import functools
import importlib
import sys

import pytest

from tests.conftest import REPO


@functools.cache  # the scripts import each other by name, as when run from scripts/
def _script(name: str):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "scripts"))


def _attack(auc: float, tpr: float = 0.0) -> dict:
    return {"auc": {"value": auc, "ci95": [auc - 0.1, auc + 0.1]}, "tpr_at_1pct_fpr": {"value": tpr},
            "tpr_at_0.1pct_fpr": {"value": tpr}}


def _audit(slice_auc: float, black_box: float = 0.55, tpr: float = 0.02, test_auc: float = 0.5) -> dict:
    return {"membership": {"loss_t50": _attack(0.7), "loss_t50_cal": _attack(0.66)},
            "membership_slices": {"loss_t50": _attack(0.55, tpr), "loss_t50_cal": _attack(slice_auc, tpr / 2)},
            "test_non_members_only": {"membership_slices": {"loss_t500": _attack(test_auc, 0.2)}},
            "reconstruction": {"membership": {"ssim": _attack(black_box), "neg_rms": _attack(0.5)}}}


@pytest.mark.parametrize("audit, met", [
    (_audit(0.60), True),
    (_audit(0.61), False),  # the strongest slice-level attack over all non-members
    (_audit(0.58, test_auc=0.62), False),  # or with the test patients alone
    (_audit(0.58, black_box=0.61), False),
    (_audit(0.58, tpr=0.06), False),  # TPR at 1 % FPR over all non-member slices
])
def test_the_privacy_aim_reads_every_attack_the_issue_names(audit, met):
    numbers = _script("benchmark_privacy_audit").privacy_aim_numbers(audit)
    assert numbers["met"] is met
    assert numbers["strongest_patient_cal_auc"] == 0.66 and numbers["strict_tpr"] == 0.2


def test_seed_table_gives_each_seed_and_the_spread(monkeypatch):
    screen = _script("screen_privacy_seeds")
    seed0 = {"ddpm_cmr": _audit(0.57), "fm_cmr": _audit(0.62)}
    monkeypatch.setattr(screen, "seed_rows", lambda result, bundle: [
        {"seed": 0, **screen.privacy_aim_numbers(seed0[bundle])},
        *({"seed": s, **result["rows"][f"{bundle}@{s}"]["aim"]} for s in screen.SEEDS if f"{bundle}@{s}" in result["rows"])])
    rows = {f"fm_cmr@{s}": {"aim": screen.privacy_aim_numbers(_audit(auc))} for s, auc in ((1, 0.58), (2, 0.60))}
    lines = screen.table({"rows": rows}).splitlines()
    ddpm = [line for line in lines if line.startswith("| ddpm_cmr")]
    fm = [line for line in lines if line.startswith("| fm_cmr")]
    assert len(ddpm) == 2 and "mean ± sd over 1 | 0.570 ± nan" in ddpm[1]  # seed 0 alone: no spread
    assert len(fm) == 4 and "| 0 | 0.62 (loss_t50_cal) |" in fm[0] and fm[0].endswith("| not met |")
    assert "mean ± sd over 3 | 0.600 ± 0.020 |" in fm[3] and fm[3].endswith("met on 2 of 3 |")
