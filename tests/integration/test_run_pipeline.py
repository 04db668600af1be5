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
"""The one-command pipeline, run as a user runs it (``cmr-synth run``), on a cohort outside the run folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests import browser
from tests.conftest import REPO

pytestmark = pytest.mark.integration
ENV = {**os.environ, "MLFLOW_TRACKING_URI": "", "OMP_NUM_THREADS": "2"}


def _cli() -> list[str]:
    exe = shutil.which("cmr-synth")
    return [exe] if exe else [sys.executable, "-m", "cmrsynth.cli"]


def _run(args, **kw):
    # a hang guard, not a speed test: a busy CI machine runs the smoke pipeline several times slower than an idle one
    return subprocess.run([*_cli(), "run", *args], capture_output=True, text=True, env=ENV, timeout=3600, **kw)


@pytest.fixture(scope="module")
def pipeline_run(phantom_cohort_master, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    args = ["--input", str(phantom_cohort_master), "--reader", "acdc", "--preset", "smoke", "--generators", "ddpm_cmr", "ldm_cmr",
            "--out", str(out)]
    first = _run(args, cwd=tmp_path_factory.mktemp("cwd"))
    return out, args, first


def test_the_pipeline_runs_every_stage_and_says_where_things_are(pipeline_run):
    out, _, proc = pipeline_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    stages = [line for line in lines if line.startswith("[")]
    assert stages[0].split("]")[1].split()[0] == "prepare" and stages[0].endswith("-> prepared")
    assert len(stages) == int(stages[0].split("/")[1].split("]")[0]), "one line per stage, numbered out of the total"
    assert any("ldm_cmr.train.autoencoder" in s for s in stages) and any("audit.mask_generator" in s for s in stages)
    assert f"report: {out / 'report' / 'report.html'}" in proc.stdout
    assert f"released dataset (ldm_cmr): {out / 'release' / 'ldm_cmr'}" in proc.stdout
    assert f"MLflow store: {out / 'mlflow.db'}" in proc.stdout
    facts = json.loads((out / "report" / "report.json").read_text())
    assert [r["generator"] for r in facts["comparison"]] == ["ddpm_cmr", "ldm_cmr"]
    nnunet = out / "release" / "ddpm_cmr" / "nnUNet_raw" / "Dataset501_CMRSynth"
    assert json.loads((nnunet / "dataset.json").read_text())["numTraining"] == len(list((nnunet / "imagesTr").iterdir()))


def test_a_rerun_skips_every_stage_done_with_the_same_inputs(pipeline_run):
    out, args, _ = pipeline_run
    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    stages = [line for line in again.stdout.splitlines() if line.startswith("[")]
    assert stages and all("up to date, skipped" in s for s in stages)


def test_one_mlflow_store_one_parent_run_and_a_child_run_per_stage(pipeline_run):
    import mlflow

    out, _, _ = pipeline_run
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cmr-synth-pipeline"])  # needs pandas: installed
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 2, "the first run and the rerun"
    first = parents.sort_values("start_time").iloc[0]
    assert (children["tags.mlflow.parentRunId"] == first["run_id"]).sum() == len(list((out / "stages").glob("*.json")))
    client = mlflow.MlflowClient()
    for exp in client.search_experiments():
        assert exp.artifact_location.startswith((out / "mlartifacts").as_uri()), exp.name
    assert {"ddpm_cmr", "ldm_cmr", "mask_generator", "seg_utility", "privacy_audit"} <= {e.name for e in client.search_experiments()}
    assert not list(REPO.glob("bundles/*/mlruns")) and not list(REPO.glob("bundles/*/models"))


def test_nothing_identifying_is_released_or_logged(pipeline_run, phantom_cohort_master):
    import mlflow

    out, _, _ = pipeline_run
    prepared = json.loads((out / "prepared" / "datalist.json").read_text())
    ids = {e["patient"] for section in ("training", "validation", "test") for e in prepared[section]}
    secrets = [*ids, str(phantom_cohort_master), phantom_cohort_master.name + "/patient"]
    for f in (out / "release").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            blob = data if not f.name.endswith(".gz") else __import__("gzip").decompress(data)
            for s in secrets:
                assert s.encode() not in blob, f"{s} in {f}"
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            text = json.dumps(run.data.params)
            for s in secrets:
                assert s not in text, f"{s} in the params of {exp.name} run {run.info.run_name}"


@pytest.mark.skipif(browser.CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_report_renders_in_headless_chromium(pipeline_run, tmp_path):
    out, _, _ = pipeline_run
    seen = browser.render(out / "report" / "report.html", tmp_path)
    assert seen["broken"] == [] and seen["errors"] == [] and seen["images"] >= 5 and seen["tables"] >= 3


@pytest.mark.parametrize("args, message", [
    (["--generators", "gan_cmr"], "unknown generator(s) ['gan_cmr']; allowed: ['ddpm_cmr', 'fm_cmr', 'ldm_cmr']"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--reader", "mnms2"], "no patients (expected <id>_SA_ED.nii.gz as in M&Ms-2)"),
])
def test_bad_requests_end_with_one_line_and_write_nothing(phantom_cohort_master, tmp_path, args, message):
    out = tmp_path / "run"
    base = ["--input", str(phantom_cohort_master), "--preset", "smoke", "--out", str(out)]
    proc = _run([*base, *args])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert message in proc.stderr
    assert not out.exists()


def test_a_cohort_too_small_for_the_preset_is_refused_before_anything_is_written(phantom_cohort_master, tmp_path):
    out = tmp_path / "run"
    proc = _run(["--input", str(phantom_cohort_master), "--preset", "cpu64", "--out", str(out)])
    assert proc.returncode == 2 and "preset 'cpu64' needs at least 6 training" in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_cohort_without_labels_is_refused(phantom_cohort, tmp_path):
    for gt in phantom_cohort.rglob("*_gt.nii.gz"):
        gt.unlink()
    proc = _run(["--input", str(phantom_cohort), "--preset", "smoke", "--out", str(tmp_path / "run")])
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "run").exists()


def test_an_output_inside_the_cohort_is_refused(phantom_cohort, tmp_path):
    proc = _run(["--input", str(phantom_cohort), "--preset", "smoke", "--out", str(phantom_cohort / "run")])
    assert proc.returncode == 2 and "inputs are never written" in proc.stderr
