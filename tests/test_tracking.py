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

import pytest

from cmrsynth.tracking import create_experiments, tracked_run, tracking_uri


def test_uri_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.absolute() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking_uri(tmp_path) == "sqlite:///elsewhere.db"
    assert tracking_uri(tmp_path, "http://server:5000") == "http://server:5000"


def test_run_is_recorded_in_a_real_sqlite_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    png = tmp_path / "grid.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    with tracked_run(tmp_path, "exp", "r1", {"prepare": {"size": 64}, "seed": 0}) as t:
        t.log_metrics({"slices": 12, "note": "skipped", "dice": 0.5}, step=1)
        t.log_artifact(png)
        run_id = t.run_id
    client = MlflowClient(tracking_uri(tmp_path))
    run = client.get_run(run_id)
    assert run.data.params == {"prepare.size": "64", "seed": "0"}
    assert run.data.metrics == {"slices": 12.0, "dice": 0.5}
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id)] == ["grid.png"]
    assert (tmp_path / "mlflow.db").is_file()


def test_failed_block_marks_the_run_failed(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError):
        with tracked_run(tmp_path, "exp") as t:
            run_id = t.run_id
            raise RuntimeError("boom")
    assert MlflowClient(tracking_uri(tmp_path)).get_run(run_id).info.status == "FAILED"


def test_every_experiment_of_a_new_store_keeps_its_artifacts_in_the_run_folder(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    create_experiments(run_dir, ["seg_utility"])
    experiments = MlflowClient(tracking_uri(run_dir)).search_experiments()
    assert {e.name for e in experiments} == {"Default", "seg_utility"}
    for experiment in experiments:  # MLflow's default would be ./mlruns of the folder the process ran in
        assert experiment.artifact_location.startswith((run_dir / "mlartifacts").as_uri()), experiment.name
