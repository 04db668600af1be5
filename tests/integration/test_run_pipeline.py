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
"""The main job, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_main_job_on_phantom_data(tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_pipeline.py"), "--out", str(out), "--n-per-group", "1", "--size", "32",
         "--train-minutes", "0.1", "--ddim-steps", "2"],
        capture_output=True, text=True, timeout=900, env={**__import__("os").environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert "prepared slices:" in proc.stdout and "duplicate subjects: none found" in proc.stdout
    assert (out / "prepared" / "datalist.json").is_file()
    assert (out / "prepared_slices.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "cmr-synth-pipeline"]
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["patients"] == 5.0
    assert run.data.metrics["synthetic_images"] == 30.0  # 1 mask per (group, phase, position), all kept, one image each
    bundle_experiments = {e.name for e in client.search_experiments()}
    assert {"mask_generator", "ddpm_cmr"} <= bundle_experiments, "the bundles' training is tracked in the same store"
    images = json.loads((out / "ddpm_cmr" / "eval" / "images" / "datalist.json").read_text())["training"]
    assert len(images) == 30 and (out / "ddpm_cmr" / "eval" / "images" / images[0]["image"]).is_file()
    assert {"seg_utility", "privacy_audit"} <= bundle_experiments
    assert {"dice_lv_ed_real", "dice_lv_ed_real_synthetic", "fd_seg", "membership_auc_loss_t100"} <= set(run.data.metrics)
    report = (out / "privacy_audit" / "eval" / "audit" / "audit.md").read_text()
    assert "| loss_t100 |" in report and "encoder-feature space" in report
    assert "segmenter trained on real_synthetic" in proc.stdout


def test_main_job_refuses_to_clobber(tmp_path):
    out = tmp_path / "demo"
    (out / "prepared").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_pipeline.py"), "--out", str(out), "--n-per-group", "1", "--size", "32"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert proc.returncode == 2 and "output folder exists" in proc.stderr
