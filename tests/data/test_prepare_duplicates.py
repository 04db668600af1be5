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
"""Preparation with duplicate subjects: detected before the split, kept on one side, recorded in the datalist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.prepare import PrepareConfig, main, prepare_cohort
from cmrsynth.data.splits import split_patients
from tests.data.test_duplicates import copy_patient

SECTIONS = ("training", "validation", "test")


@pytest.fixture(scope="module")
def cohort_with_copies(phantom_cohort_master, tmp_path_factory) -> Path:
    """Five phantom patients plus patient002 copied as patient101 and patient004 copied, rescaled and re-noised,
    as patient102; the copies join the same groups (Info.cfg copied), as in ACDC."""
    root = Path(shutil.copytree(phantom_cohort_master, tmp_path_factory.mktemp("prep_dups") / "cohort"))
    copy_patient(root, "patient002", "patient101")
    copy_patient(root, "patient004", "patient102", scale=0.7, noise_sd=0.02, seed=3)
    return root


def _split_of(datalist: dict) -> dict[str, str]:
    return {pid: p["split"] for pid, p in datalist["patients"].items()}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_duplicates_share_a_split_and_are_recorded(cohort_with_copies, tmp_path, seed):
    out = tmp_path / "p"
    cfg = PrepareConfig(size=16, fractions=(0.4, 0.3, 0.3), seed=seed, n_central=1)
    summary = prepare_cohort(read_acdc(cohort_with_copies), out, cfg)
    d = json.loads((out / "datalist.json").read_text())
    groups = [["patient002", "patient101"], ["patient004", "patient102"]]
    assert d["duplicate_groups"] == summary["duplicate_groups"] == groups
    split = _split_of(d)
    assert split["patient002"] == split["patient101"] and split["patient004"] == split["patient102"]
    assert d["duplicate_check"]["policy"] == "together" and len(d["duplicate_check"]["pairs"]) == 2
    entries = [e for s in SECTIONS for e in d[s]]
    assert {e["subject"] for e in entries if e["patient"] in ("patient002", "patient101")} == {"patient002"}
    assert all(e["subject"] == e["patient"] for e in entries if e["patient"] in ("patient001", "patient003"))
    assert d["patients"]["patient102"]["subject"] == "patient004"
    assert not set(d["roles"]["member"]) & set(d["roles"]["non_member"])


def test_drop_keeps_the_first_id_of_each_group(cohort_with_copies, tmp_path):
    out = tmp_path / "p"
    summary = prepare_cohort(read_acdc(cohort_with_copies), out, PrepareConfig(size=16, n_central=1, duplicates="drop"))
    d = json.loads((out / "datalist.json").read_text())
    assert summary["dropped_duplicates"] == d["duplicate_check"]["dropped"] == ["patient101", "patient102"]
    assert set(d["patients"]) == {f"patient00{i}" for i in range(1, 6)} and summary["patients"] == 5
    assert not {e["patient"] for s in SECTIONS for e in d[s]} & {"patient101", "patient102"}


def test_without_duplicates_the_split_is_the_plain_one(phantom_cohort_master, tmp_path):
    """A cohort without duplicates keeps the split of the algorithm before the check existed, ids per split equal."""
    records = read_acdc(phantom_cohort_master)
    cfg = dict(size=16, n_central=1, fractions=(0.6, 0.2, 0.2))
    checked = prepare_cohort(records, tmp_path / "a", PrepareConfig(**cfg))
    prepare_cohort(records, tmp_path / "b", PrepareConfig(**cfg, duplicates="off"))
    a, b = (json.loads((tmp_path / x / "datalist.json").read_text()) for x in "ab")
    assert checked["duplicate_groups"] == a["duplicate_groups"] == [] and b["duplicate_check"]["policy"] == "off"
    plain = split_patients({r.patient_id: r.group for r in records}, (0.6, 0.2, 0.2), 0)
    assert _split_of(a) == _split_of(b) == plain
    for s in SECTIONS:
        assert [e["image"] for e in a[s]] == [e["image"] for e in b[s]]


def test_cli_names_the_groups(cohort_with_copies, tmp_path, capsys):
    assert main(["--input", str(cohort_with_copies), "--out", str(tmp_path / "o"), "--size", "16", "--n-central", "1"]) == 0
    out = capsys.readouterr().out
    assert "duplicate subjects: 2 group(s), each group kept in one split:" in out
    assert "patient002 = patient101" in out and "patient004 = patient102" in out
    assert main(["--input", str(cohort_with_copies), "--out", str(tmp_path / "d"), "--size", "16", "--n-central", "1",
                 "--duplicates", "drop"]) == 0
    assert "patient004 = patient102 (dropped)" in capsys.readouterr().out


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match=r"duplicates must be one of \['together', 'drop', 'off'\], got 'merge'"):
        PrepareConfig(duplicates="merge")
