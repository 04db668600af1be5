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
"""scripts/measure_duplicates.py on a phantom cohort with one copied patient."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from tests.conftest import REPO
from tests.data.test_duplicates import copy_patient


def _script():
    spec = importlib.util.spec_from_file_location("measure_duplicates", REPO / "scripts" / "measure_duplicates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measures_the_copy_apart_from_distinct_pairs(phantom_cohort_master, tmp_path, capsys):
    cohort = Path(shutil.copytree(phantom_cohort_master, tmp_path / "cohort"))
    copy_patient(cohort, "patient003", "patient103", scale=1.3, noise_sd=0.01)
    out = tmp_path / "m.json"
    assert _script().main(["--input", str(cohort), "--out", str(out), "--plant-every", "3"]) == 0
    m = json.loads(out.read_text())
    assert m["patients"] == 6 and m["duplicate_groups"] == [["patient003", "patient103"]]
    [pair] = m["duplicate_pairs"]
    assert pair["distance"] < m["distinct_pairs"]["min"] / 3 and m["distinct_pairs"]["n"] == 14  # 15 pairs less the copy
    assert m["nearest_other_patient"]["patient103"]["patient"] == "patient003"
    assert len(m["planted_copies"]) == 2 * 6 and m["planted_copies_max"]["scale 1, noise 0"] == 0.0
    # the copy sits in the same group as its original, so the plain split is kept or the pair moves together
    split = m["split"]
    assert all(len(set(g.values())) > 1 for g in split["plain_split_of_groups"]) == bool(split["straddling"])
    assert "patient003" in capsys.readouterr().out
