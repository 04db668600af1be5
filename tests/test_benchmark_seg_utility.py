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
"""scripts/benchmark_seg_utility.py: modes at several segmenter seeds and their spread table."""

from __future__ import annotations

from tests.scripts_helpers import script


def _script():
    return script("benchmark_seg_utility")


def _run(seed: int, dice: float) -> dict:
    summary = {cell: {"mean": dice} for cell in _script().CELLS}
    summary["ES/dice_rv"] = {"mean": dice - 0.1 * seed}  # the one cell that moves with the seed
    return {"seed": seed, "iteration": 700, "acdc_test": {"summary": summary}}


def test_only_modes_with_generated_images_need_the_generators():
    script = _script()
    assert [script.needs_synthetic(m) for m in ("real", "real@2", "few5", "few5+syn", "synthetic@1", "mixed")] == \
        [False, False, False, True, True, True]


def test_seed_spread_table_reports_mean_and_sd_across_seeds():
    script = _script()
    result = {"modes": {"real": _run(0, 0.5), "real@0": _run(0, 0.9), "real@1": _run(1, 0.9), "real@2": _run(2, 0.9),
                        "synthetic@1": _run(1, 0.8)}}
    rows = script.seed_spread_table(result).splitlines()
    assert len(rows) == 3  # header, rule, real; a mode at one seed has no spread and the seedless row is not counted
    assert rows[2].startswith("| real | 0, 1, 2 | 700 | 0.900 ± 0.000 / 0.900 ± 0.000 |")
    assert "0.800 ± 0.100 | 0.100 (ES/dice_rv) |" in rows[2]
