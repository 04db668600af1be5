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
"""Resumable pipeline stages: each stage records a hash of its settings and of the stages it stands on.

A stage whose record says ``done`` with the same hash is skipped; one that crashed (record ``running``, same hash)
runs again in place, so a bundle's training resumes from its last checkpoint; one whose settings changed starts over
(its folders are removed first, never anything outside the run folder). Each stage is an MLflow child run of the
pipeline's run and prints one line: its number, name, elapsed time and what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cmrsynth.data.atomic import write_json_atomic
from cmrsynth.tracking import flatten

REPO = Path(__file__).resolve().parents[3]


def fingerprint(obj) -> str:
    """A short sha256 of any JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_fingerprint(paths: Sequence[Path]) -> str:
    """A sha256 over the names and contents of files (configs a stage runs with)."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def bundle_fingerprint(bundle: str, configs: Sequence[str]) -> str:
    """The hash of the config files a stage runs: a changed recipe reruns the stages that use it (and only them)."""
    return files_fingerprint([REPO / "bundles" / bundle / "configs" / c for c in configs])


class StageRunner:
    """Runs named stages of one pipeline run folder, skipping the ones already done with the same inputs."""

    def __init__(self, out: Path, total: int, tracker=None, stream=sys.stdout):
        self.out, self.total, self.tracker, self.stream = out, total, tracker, stream
        self.records: dict[str, dict] = {}
        self.count = 0
        (out / "stages").mkdir(parents=True, exist_ok=True)

    def _record_path(self, name: str) -> Path:
        return self.out / "stages" / f"{name}.json"

    def run(self, name: str, settings: dict, after: Sequence[str], folders: Sequence[Path], job: Callable[[], dict]) -> dict:
        """Run ``job`` (returns a JSON-able result) unless done before with the same settings and upstream stages.

        Args:
            name: stage name (unique in the run).
            settings: everything that changes what the stage makes (overrides, config hashes).
            after: stages whose results it uses (their hashes join this one's).
            folders: what the stage writes (removed before a rerun with other settings).
            job: the work.
        """
        self.count += 1
        key = fingerprint({"settings": settings, "after": {a: self.records[a]["hash"] for a in after}})
        path = self._record_path(name)
        old = json.loads(path.read_text()) if path.is_file() else None
        # a deleted output is redone, and so is a record that does not list its outputs (an older version's)
        outputs_there = old is not None and "outputs" in old and all((self.out / p).exists() for p in old["outputs"])
        if old and old["hash"] == key and old["status"] == "done" and outputs_there:
            self.records[name] = old
            self._line(name, "up to date, skipped", old.get("wrote", ""))
            if self.tracker is not None:
                with self.tracker.child(name, {"skipped": "up to date", "hash": key}):
                    pass
            return old["result"]
        if old and old["hash"] != key:
            for folder in folders:
                self._remove(folder)
        write_json_atomic(path, {"hash": key, "status": "running", "settings": settings})
        t0 = time.perf_counter()
        result = self._tracked(name, settings, job)
        seconds = round(time.perf_counter() - t0, 1)
        made = [self._short(f) for f in folders if Path(f).exists()]
        wrote = ", ".join(self._short(f) for f in folders if Path(f).is_dir())
        record = {"hash": key, "status": "done", "settings": settings, "seconds": seconds, "wrote": wrote, "outputs": made,
                  "result": result}
        write_json_atomic(path, record)
        self.records[name] = record
        self._line(name, f"{seconds:.0f} s", wrote)
        return result

    def _tracked(self, name: str, settings: dict, job: Callable[[], dict]) -> dict:
        if self.tracker is None:
            return job()
        with self.tracker.child(name, settings) as child:
            result = job()
            child.log_metrics(_numbers(result))
            return result

    def _remove(self, folder: Path) -> None:
        folder = Path(folder).resolve()
        if self.out.resolve() in folder.parents and folder.exists():
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()

    def _short(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.out))
        except ValueError:
            return str(path)

    def _line(self, name: str, what: str, wrote: str) -> None:
        arrow = f" -> {wrote}" if wrote else ""
        print(f"[{self.count:2d}/{self.total}] {name:<28s} {what}{arrow}", file=self.stream, flush=True)


def _numbers(result) -> dict[str, float]:
    """Flat numeric leaves of a nested result (MLflow metric names: letters, digits, _ - . /)."""
    leaves = flatten(result, leaf=lambda v: v) if isinstance(result, dict) else {}
    return {k.replace(" ", "_"): float(v) for k, v in leaves.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
