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
"""The audit's guard on its non-member set: held-out copies of training patients are found and left out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmrsynth.audit import guarded_slices, run_audit
from cmrsynth.audit_guard import check_line, check_non_members, member_threshold
from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.prepare import PrepareConfig, prepare_cohort
from cmrsynth.metrics.privacy import nearest_other
from tests.data.test_duplicates import copy_patient
from tests.generative.helpers import OBJECTIVES, tiny_generator

COPIES = ["patient101", "patient102", "patient103"]


@pytest.fixture(scope="module")
def cohort(phantom_cohort_master, tmp_path_factory) -> Path:
    """Five phantom patients and three copies: patient101 of patient002 (x 0.7, noise 2 % of the range), patient102
    of patient004 (as it is), patient103 of patient003 (x 1.5, noise 1 %). With seed 0 and fractions 0.4 / 0.3 / 0.3
    every copy lands held out while its original trains, when the duplicate check is off."""
    root = Path(shutil.copytree(phantom_cohort_master, tmp_path_factory.mktemp("guard") / "cohort"))
    copy_patient(root, "patient002", "patient101", scale=0.7, noise_sd=0.02, seed=1)
    copy_patient(root, "patient004", "patient102")
    copy_patient(root, "patient003", "patient103", scale=1.5, noise_sd=0.01, seed=2)
    return root


def _prepare(cohort: Path, out: Path, duplicates: str) -> Path:
    prepare_cohort(read_acdc(cohort), out, PrepareConfig(size=32, fractions=(0.4, 0.3, 0.3), seed=0, duplicates=duplicates))
    return out


@pytest.fixture(scope="module")
def unchecked(cohort, tmp_path_factory) -> Path:
    """Prepared without the duplicate check: the copies straddle the split."""
    out = _prepare(cohort, tmp_path_factory.mktemp("off") / "p", "off")
    patients = json.loads((out / "datalist.json").read_text())["patients"]
    for copy, original in zip(COPIES, ("patient002", "patient004", "patient003")):
        assert (patients[copy]["role"], patients[original]["role"]) == ("non_member", "member")
    return out


def test_held_out_copies_of_members_are_flagged_and_left_out(unchecked):
    slices, train, check = guarded_slices(unchecked, per_patient=6)
    assert check["excluded"] == COPIES and check["checked"] == 5
    assert {f["patient"]: f["nearest_member"] for f in check["flagged"]} == dict(
        zip(COPIES, ("patient002", "patient004", "patient003")))
    assert all(f["near_copy_slices"] == f["slices"] for f in check["flagged"])
    assert {e["patient"] for e in slices if e["role"] == "non_member"} == {"patient001", "patient005"}
    assert len(train) > 0 and check["threshold"] > 0
    line = check_line(check)
    assert line.startswith("**Non-member set: 3 held-out patient(s) are near-copies") and all(p in line for p in COPIES)


def test_distinct_non_members_pass_the_check(cohort, tmp_path):
    prepared = _prepare(cohort, tmp_path / "p", "together")
    slices, _, check = guarded_slices(prepared, per_patient=6)
    assert check["flagged"] == [] and check["excluded"] == [] and check["checked"] >= 2
    assert check_line(check) == "Non-member set checked: no near-copies of members."
    assert len(slices) == len(guarded_slices(prepared, per_patient=6)[0])


def test_run_audit_reports_the_check_at_the_top(unchecked, tmp_path):
    out = tmp_path / "audit"
    result = run_audit(tiny_generator(OBJECTIVES["ddpm"]()), unchecked, out, per_patient=2, levels=(0.1,), batch_size=8,
                       reconstruction=False)
    assert result["non_members"] == 2 and result["members"] == 3
    assert all(m["non_members"] == 2 for m in result["membership"].values())
    saved = json.loads((out / "audit.json").read_text())
    assert saved["non_member_check"]["excluded"] == COPIES
    report = (out / "audit.md").read_text().splitlines()
    assert report[0].startswith("# Privacy audit") and report[2].startswith("**Non-member set: 3 held-out")


def test_member_threshold_skips_the_same_subject():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 8, 8)), rng.normal(size=(4, 8, 8))
    members = [{"array": x, "patient": p, "subject": s} for x, p, s in
               [*((x, "m1", "m1") for x in a), *((x, "m2", "m1") for x in a), *((x, "m3", "m3") for x in b)]]
    # m2 is m1 filed twice: same subject, so its identical slices do not drag the threshold to 0
    assert member_threshold(members, quantile=0.0, margin=1.0) > 1.0
    assert member_threshold(members, quantile=0.0, margin=0.5) == pytest.approx(0.5 * member_threshold(members, 0.0, 1.0))
    with pytest.raises(ValueError, match="at least 2 subjects"):
        member_threshold(members[:8])


def test_a_partial_match_is_not_a_copy():
    """A stranger close to a member on one slice in four is not flagged (min_share 0.5)."""
    rng = np.random.default_rng(1)
    m = rng.normal(size=(40, 8, 8))
    members = [{"array": x, "patient": f"m{i // 4}"} for i, x in enumerate(m)]
    stranger = [rng.normal(size=(8, 8)) for _ in range(3)] + [m[0] + 0.01]
    slices = [{"array": x, "patient": "s", "role": "non_member"} for x in stranger]
    check = check_non_members(slices, members)
    assert check["flagged"] == []
    assert check_non_members(slices, members, min_share=0.25)["flagged"][0]["nearest_member"] == "m0"


def test_nearest_other_skips_equal_labels():
    refs = np.array([[0.0], [1.0], [5.0]])
    d, i = nearest_other(np.array([[0.1], [4.0]]), refs, ["a", "b"], ["a", "a", "b"])
    assert i.tolist() == [2, 1] and d == pytest.approx([4.9, 3.0])
    d, i = nearest_other(np.array([[0.1]]), refs)
    assert i.tolist() == [0] and d == pytest.approx([0.1])
    with pytest.raises(ValueError, match="differ in size"):
        nearest_other(np.zeros((1, 2)), refs)


def test_release_gate_calibrates_without_held_out_copies(unchecked, tmp_path):
    """Held-out copies of members would pull the gate's threshold to 0 and let planted training slices through."""
    from cmrsynth.audit import release

    syn = Path(shutil.copytree(unchecked, tmp_path / "synthetic"))
    planted = json.loads((syn / "datalist.json").read_text())["training"][:3]
    (syn / "datalist.json").write_text(json.dumps({"training": planted}))
    record = release(syn / "datalist.json", unchecked / "datalist.json", syn / "released.json")
    assert record["holdout_near_copies_left_out"] == COPIES and record["holdout_patients"] == 2
    assert record["kept"] == 0 and all("closer to a training slice" in r["reason"] for r in record["removed"])
