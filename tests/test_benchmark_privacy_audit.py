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

import json
from pathlib import Path

import pytest

from tests.scripts_helpers import audit, script


@pytest.mark.parametrize("result, met", [
    (audit(0.60), True),
    (audit(0.61), False),  # the strongest slice-level attack over all non-members
    (audit(0.58, test_auc=0.62), False),  # or with the test patients alone
    (audit(0.58, black_box=0.61), False),
    (audit(0.58, tpr=0.06), False),  # TPR at 1 % FPR over all non-member slices
])
def test_the_privacy_aim_reads_every_attack_the_issue_names(result, met):
    numbers = script("benchmark_privacy_audit").privacy_aim_numbers(result)
    assert numbers["met"] is met
    assert numbers["strongest_patient_cal_auc"] == 0.66 and numbers["strict_tpr"] == 0.2


def test_seed_table_gives_each_seed_and_the_spread():
    screen = script("screen_privacy_seeds")
    benchmark = {"public_6": {"audit": audit(0.57)}, "fm_public_6": {"audit": audit(0.62)}}  # seed 0
    rows = {f"fm_cmr@{s}": {"audit": audit(auc)} for s, auc in ((1, 0.58), (2, 0.60))}
    assert [r["seed"] for r in screen.seed_rows({"rows": rows}, benchmark, "fm_cmr")] == [0, 1, 2]
    lines = screen.table({"rows": rows}, benchmark).splitlines()
    ddpm = [line for line in lines if line.startswith("| ddpm_cmr")]
    fm = [line for line in lines if line.startswith("| fm_cmr")]
    assert len(ddpm) == 2 and "mean ± sd over 1 | 0.570 ± nan" in ddpm[1]  # seed 0 alone: no spread
    assert len(fm) == 4 and "| 0 | 0.62 (loss_t50_cal) |" in fm[0] and fm[0].endswith("| not met |")
    assert "mean ± sd over 3 | 0.600 ± 0.020 |" in fm[3] and fm[3].endswith("met on 2 of 3 |")


def test_an_audit_passes_the_recipes_sampling_and_seed_and_is_run_once(tmp_path, monkeypatch):
    bench = script("benchmark_privacy_audit")
    calls = []

    def fake_run(bundle, configs, root, overrides, **kw):
        calls.append(overrides)
        Path(overrides["output_dir"]).mkdir(parents=True)
        Path(overrides["output_dir"], "audit.json").write_text(json.dumps({"leakage": {"synthetic_to_train": [1]}}))

    monkeypatch.setattr(bench, "run_bundle", fake_run)
    student = bench.Recipe("a student", "fm_cmr_student", bundle="fm_cmr", generator_overrides={"num_inference_steps": 2})
    result = bench.audit(tmp_path, student, "fm_cmr_student@1", tmp_path / "data", tmp_path / "syn.json", tmp_path / "enc", 1, 6,
                         seed=1)
    assert result == {"leakage": {}}  # the per-sample list stays behind
    assert calls[0]["seed"] == 1 and calls[0]["generator_overrides"] == {"num_inference_steps": 2}
    assert calls[0]["generator_root"] == str(tmp_path / "fm_cmr_student") and calls[0]["feature_encoder_root"] == str(tmp_path / "enc")
    teacher = bench.Recipe("a teacher", "fm_cmr_pre6", bundle="fm_cmr")
    bench.audit(tmp_path, teacher, "fm_cmr@1", tmp_path / "data", None, Path(), 1, 6, seed=1)
    assert "generator_overrides" not in calls[1] and "synthetic_datalist" not in calls[1]  # its bundle's own sampler
    bench.audit(tmp_path, student, "fm_cmr_student@1", tmp_path / "data", None, Path(), 1, 6, seed=1)
    assert len(calls) == 2  # an audit already written is read, not rerun
