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
"""scripts/benchmark_fast_sampling.py: the image-stage comparison of a reflow student with its teacher."""

from __future__ import annotations

import pytest

from tests.scripts_helpers import audit, script


def _row(name: str, steps: int, faithful: float, dice: float | None) -> dict:
    row = {"generator": name, "steps": steps, "flops_per_slice": 1e6 * steps,
           "fidelity": {"mask_faithfulness": {"lv": faithful, "myo": faithful, "rv": faithful}, "fd_seg": 0.01, "kid_seg": 1e-4}}
    if dice is not None:
        row["segmenter"] = {"summary": {f"{p}/dice_{s}": {"mean": dice} for p in ("ED", "ES") for s in ("lv", "myo", "rv")}}
    return row


@pytest.mark.parametrize("bundle, sampler", [("fm_cmr", "Euler"), ("ldm_cmr", "DDIM")])
def test_the_student_table_measures_each_row_against_the_teacher_at_its_default_steps(bundle, sampler):
    bench, aim = script("benchmark_fast_sampling"), script("benchmark_privacy_audit").privacy_aim_numbers
    plan = bench.student_rows(bundle)
    assert plan[0] == ("teacher", bench.TEACHER_STEPS[bundle], True) and ("reflow", 2, True) in plan
    quality = {("teacher", plan[0][1]): (0.80, 0.85), ("teacher", 2): (0.82, None), ("teacher", 1): (0.70, None),
               ("reflow", 2): (0.80, 0.86), ("reflow", 1): (0.79, 0.83)}
    rows = {f"{name}_{steps}": _row(name, steps, *quality[name, steps]) for name, steps, _ in plan}
    comparison = {"bundle": bundle, "rows": rows, "coupling_errors": {"reflow": {"1": {"mse": 0.002}, "2": {"mse": 0.001}}},
                  "training": {"couplings": 512, "validation_couplings": 128, "teacher_evaluations": 32000,
                               "minutes_before_training": 12, "minutes_training": 22, "iteration": 2000},
                  "privacy": {"teacher, seed 1": aim(audit(0.62)), "reflow, seed 1": aim(audit(0.58))}}
    lines = bench.image_student_tables(comparison).splitlines()
    assert f"| generator | {sampler} steps |" in lines[0] and f"teacher's {sampler}-{plan[0][1]} |" in lines[0]
    by_row = {tuple(line.split(" | ")[:2]): line for line in lines if line.startswith(("| teacher", "| reflow"))}
    assert by_row["| teacher", str(plan[0][1])].endswith("| - | - |")  # the reference itself
    assert by_row["| teacher", "2"].endswith("| none |")  # higher faithfulness, no segmenter: nothing lower
    assert by_row["| teacher", "1"].endswith("| 0.100 (faithfulness LV) |")
    assert by_row["| reflow", "2"].endswith("| 0.0010 | none |")
    assert by_row["| reflow", "1"].endswith("| 0.020 (synthetic-only Dice LV) |")  # faithfulness 0.01, Dice 0.02 lower
    assert "| teacher, seed 1 | 0.62 (loss_t50_cal) |" in lines[-2] and lines[-2].endswith("| not met |")
    assert lines[-1].endswith("| met |")
