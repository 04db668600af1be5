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
"""cmrsynth.pipeline.stages: resumable, hashed stages."""

from __future__ import annotations

import io
import json

import pytest

from cmrsynth.pipeline.stages import StageRunner


def _runner(tmp_path, total=3):
    return StageRunner(tmp_path, total, stream=io.StringIO())


def test_a_done_stage_is_skipped_with_the_same_settings(tmp_path):
    calls = []
    for _ in range(2):
        runner = _runner(tmp_path)
        result = runner.run("a", {"steps": 3}, [], [tmp_path / "a"], lambda: calls.append(1) or (tmp_path / "a").mkdir() or {"value": 1.5})
        assert result == {"value": 1.5}
    assert len(calls) == 1
    assert "up to date, skipped" in runner.stream.getvalue()


def test_a_done_stage_whose_output_was_deleted_runs_again(tmp_path):
    calls = []
    for _ in range(2):
        _runner(tmp_path).run("a", {}, [], [tmp_path / "a"], lambda: calls.append(1) or (tmp_path / "a").mkdir() or {})
        (tmp_path / "a").rmdir()
    assert len(calls) == 2


def test_a_done_record_that_does_not_list_its_outputs_runs_again(tmp_path):
    calls = []
    _runner(tmp_path).run("a", {}, [], [tmp_path / "a"], lambda: calls.append(1) or {})
    [record_path] = (tmp_path / "stages").glob("a*.json")
    record = json.loads(record_path.read_text())
    del record["outputs"]  # as an earlier version wrote it
    record_path.write_text(json.dumps(record))
    _runner(tmp_path).run("a", {}, [], [tmp_path / "a"], lambda: calls.append(1) or {})
    assert len(calls) == 2


def test_a_folder_the_stage_may_not_write_does_not_make_it_rerun(tmp_path):
    calls = []
    for _ in range(2):
        _runner(tmp_path).run("a", {}, [], [tmp_path / "made", tmp_path / "never"],
                              lambda: calls.append(1) or (tmp_path / "made").mkdir(exist_ok=True) or {})
    assert len(calls) == 1


def test_changed_settings_remove_the_old_outputs_and_rerun(tmp_path):
    folder = tmp_path / "a"

    def job():
        assert not (folder / "old.txt").exists(), "outputs of other settings must be gone before a rerun"
        folder.mkdir(exist_ok=True)
        (folder / "old.txt").write_text("x")
        return {}

    _runner(tmp_path).run("a", {"steps": 3}, [], [folder], job)
    _runner(tmp_path).run("a", {"steps": 4}, [], [folder], job)
    assert json.loads((tmp_path / "stages" / "a.json").read_text())["settings"] == {"steps": 4}


def test_a_crashed_stage_reruns_in_place_so_training_resumes(tmp_path):
    folder = tmp_path / "a"

    def crash():
        folder.mkdir()
        (folder / "checkpoint.pt").write_text("epoch 3")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        _runner(tmp_path).run("a", {"steps": 3}, [], [folder], crash)
    assert json.loads((tmp_path / "stages" / "a.json").read_text())["status"] == "running"
    seen = _runner(tmp_path).run("a", {"steps": 3}, [], [folder], lambda: {"resumed_from": (folder / "checkpoint.pt").read_text()})
    assert seen == {"resumed_from": "epoch 3"}


def test_a_changed_upstream_stage_reruns_the_stages_after_it(tmp_path):
    calls = []
    for steps in (3, 3, 5):
        runner = _runner(tmp_path)
        runner.run("a", {"steps": steps}, [], [], lambda: {})
        runner.run("b", {}, ["a"], [], lambda: calls.append(1) or {})
    assert len(calls) == 2, "b reruns only when a's settings change"


def test_folders_outside_the_run_folder_are_never_removed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    StageRunner(run, 1, stream=io.StringIO()).run("a", {"v": 1}, [], [outside], lambda: {})
    StageRunner(run, 1, stream=io.StringIO()).run("a", {"v": 2}, [], [outside], lambda: {})
    assert outside.is_dir()
