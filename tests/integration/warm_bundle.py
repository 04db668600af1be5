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
"""Start ``python -m monai.bundle run`` processes fast enough to kill dozens of them in a test.

A cold start imports torch, MONAI and cmrsynth, about 9 s on the 2-core CI machine, which would make the crash
tests (over 40 runs) cost minutes. A server process imports them once; each run is a fork of it that executes
``monai.bundle``'s ``__main__`` with the run's argv, environment and log file: the same code path as the command,
a separate process with its own pid that the tests SIGKILL. Each crash test's last run is a cold
``python -m monai.bundle run`` (``cmrsynth.bundle_run.run_bundle``), so the real command is what finishes the job.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from cmrsynth.bundle_run import override_args

_SERVER = r"""
import json, os, runpy, sys, traceback
import torch, ignite, monai.bundle, monai.bundle.scripts  # what every run imports, once
import cmrsynth, cmrsynth.engines, cmrsynth.generative, cmrsynth.data.checks, cmrsynth.dp, cmrsynth.segment
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "start":
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.environ.update(req["env"])
                sys.argv = ["monai.bundle", *req["args"]]
                runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif req["op"] == "wait":
        _, status = os.waitpid(req["pid"], 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def _running(pid: int) -> bool:
    """True while ``pid`` runs (not ended, not a zombie waiting for the server to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class WarmBundleLauncher:
    """Fork ``monai.bundle run`` processes from a warm interpreter (see the module docstring)."""

    def __init__(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env=env)

    def _ask(self, request: dict, timeout: float) -> dict:
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        ready, _, _ = select.select([self.server.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer to {request} within {timeout} s")
        return json.loads(self.server.stdout.readline())

    def start(self, bundle: Path, configs: list[str], root: Path, overrides: dict, log: Path, env: dict | None = None) -> int:
        """Start a run; returns its pid. Its stdout and stderr go to ``log``."""
        files = json.dumps([str(bundle / "configs" / c) for c in configs])
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        args = ["run", "--bundle_root", str(root), "--config_file", files, *override_args(overrides)]
        return self._ask({"op": "start", "args": args, "log": str(log), "env": env or {}}, 120)["pid"]

    def wait(self, pid: int, timeout: float = 300) -> int:
        """Exit code of a run (negative: killed by that signal)."""
        try:
            return self._ask({"op": "wait", "pid": pid}, timeout)["code"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            raise

    def kill_when(self, pid: int, ready, delay: float, timeout: float = 900) -> int:
        """SIGKILL run ``pid`` ``delay`` seconds after ``ready()`` turns true; returns its exit code."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not _running(pid):
                return self.wait(pid)  # it ended before the kill point: the caller sees its exit code
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError("the run never reached its kill point")
            time.sleep(0.02)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        return self.wait(pid)

    def close(self) -> None:
        """Stop the server."""
        self.server.stdin.close()
        self.server.wait(timeout=30)
