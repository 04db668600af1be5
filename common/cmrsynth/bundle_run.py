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
"""Run a bundle config the way a user does (``python -m monai.bundle run``), for benchmarks and tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def override_args(overrides: dict) -> list[str]:
    """Turn {"max_epochs": 2, "channels": [8, 16]} into ["--max_epochs", "2", "--channels", "[8, 16]"].

    Lists, dicts, booleans and None are written as Python literals, which the bundle CLI (fire) parses back.
    """
    args = []
    for key, value in overrides.items():
        literal = isinstance(value, (list, tuple, dict, bool)) or value is None
        args += [f"--{key}", repr(value) if literal else str(value)]
    return args


def run_bundle(
    bundle_dir: str | Path,
    configs: list[str],
    bundle_root: str | Path,
    overrides: dict | None = None,
    log: str | Path | None = None,
    extra_args: list[str] | None = None,
    env: dict | None = None,
    timeout: float | None = None,
    cwd: str | Path | None = None,
) -> float:
    """Run ``python -m monai.bundle run`` with the bundle's configs and overrides; return the wall time (s).

    Args:
        bundle_dir: the bundle folder (holds configs/).
        configs: config file names under configs/, in order (e.g. ["common.yaml", "train.yaml"]).
        bundle_root: where checkpoints (models/) and outputs (eval/) go.
        overrides: config ids to values (passed as --id value).
        log: file that receives stdout and stderr (else they are captured and shown on failure).
        extra_args: more command-line words (e.g. ["--tracking", "mlflow"]).
        env: extra environment variables.
        timeout: seconds before the run is killed.
        cwd: the folder it runs in (MLflow's default artifact folder ./mlruns lands there).

    Raises:
        RuntimeError: the run failed; the message holds the tail of its output.
    """
    bundle_dir = Path(bundle_dir)
    files = [str(bundle_dir / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(bundle_root),
           "--config_file", json.dumps(files), *override_args(overrides or {}), *(extra_args or [])]
    t0 = time.perf_counter()
    full_env = {**os.environ, **(env or {})}
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=full_env, timeout=timeout, cwd=cwd)
        tail = Path(log).read_text()[-3000:] if proc.returncode else ""
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd)
        tail = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"bundle run failed ({' '.join(cmd)}):\n{tail}")
    return time.perf_counter() - t0


def trainer_progress(checkpoint: str | Path) -> dict:
    """Epoch and iteration stored in a ResumableCheckpoint file."""
    from cmrsynth.engines import load_checkpoint

    state = load_checkpoint(checkpoint)["trainer"]
    iteration = int(state["iteration"])  # ignite keeps the iteration; the epoch follows from the epoch length
    return {"epoch": iteration // int(state["epoch_length"]), "iteration": iteration}
