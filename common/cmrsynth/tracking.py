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
"""MLflow tracking: a SQLite store under the run's output folder by default, no server needed.

The URI is, in order: the one passed in (a config value), ``MLFLOW_TRACKING_URI``, then
``sqlite:///<run_dir>/mlflow.db``. (MONAI's MLFlowHandler refuses ``file:`` stores, so SQLite is the default.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


def tracking_uri(run_dir: str | Path, uri: str | None = None) -> str:
    """Resolve the MLflow tracking URI for a run folder (see the module docstring for the order)."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = Path(run_dir).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def flatten(params: Mapping, prefix: str = "", leaf=lambda v: str(v)[:500]) -> dict:
    """Nested mappings as one level with dotted keys; ``leaf`` turns each value into what is kept (MLflow params:
    text of at most 500 characters)."""
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}.", leaf))
        else:
            out[key] = leaf(v)
    return out


class Tracker:
    """A thin handle on an active MLflow run: params, metrics and file artifacts."""

    def __init__(self, mlflow_module, run):
        self._mlflow, self.run = mlflow_module, run

    @property
    def run_id(self) -> str:
        """The MLflow run id."""
        return self.run.info.run_id

    def log_params(self, params: Mapping) -> None:
        """Log (nested) parameters, flattened with dots."""
        self._mlflow.log_params(flatten(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics (non-numbers are skipped)."""
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._mlflow.log_metrics(numeric, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Attach a file (PNG, JSON, ...) to the run."""
        self._mlflow.log_artifact(str(path), artifact_path=folder)

    @contextlib.contextmanager
    def child(self, name: str, params: Mapping | None = None) -> Iterator[Tracker]:
        """A nested run under this one (a pipeline stage); it ends FAILED if the block raises."""
        with self._mlflow.start_run(run_name=name, nested=True) as run:
            tracker = Tracker(self._mlflow, run)
            if params:
                tracker.log_params(params)
            yield tracker


def create_experiments(run_dir: str | Path, names: Sequence[str], uri: str | None = None) -> str:
    """Create MLflow experiments that do not exist yet, their artifacts under ``run_dir/mlartifacts`` for a local
    store (MLflow's default for a SQLite store is ``./mlruns`` of whatever folder a process runs in). Creating the
    bundles' experiments before they run keeps one run folder's artifacts in one place. Returns the store's URI."""
    import mlflow

    uri = tracking_uri(run_dir, uri)
    location = (Path(run_dir).absolute() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    if location and not Path(uri.removeprefix("sqlite:///")).exists():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(uri, location)  # a new store's Default experiment: its artifacts in the run folder too
    mlflow.set_tracking_uri(uri)
    for name in names:
        if mlflow.get_experiment_by_name(name) is None:
            mlflow.create_experiment(name, artifact_location=location)
    return uri


@contextlib.contextmanager
def tracked_run(
    run_dir: str | Path, experiment: str, run_name: str | None = None, params: Mapping | None = None, uri: str | None = None
) -> Iterator[Tracker]:
    """Open an MLflow run in ``experiment``, artifacts stored under ``run_dir/mlartifacts`` for a local store.

    Yields:
        a Tracker; the run ends FAILED if the block raises.
    """
    import mlflow

    uri = tracking_uri(run_dir, uri)
    create_experiments(run_dir, [experiment], uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        tracker = Tracker(mlflow, run)
        if params:
            tracker.log_params(params)
        yield tracker
