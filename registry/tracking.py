"""MLflow tracking with explicit run ids: one parent run per pipeline run, one child per stage.

Nothing here touches MLflow's fluent "active run" state, so several pipelines (or tests)
can track in one process, and a run can never be left RUNNING by a forgotten context.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

log = logging.getLogger(__name__)

_BATCH = 900  # MLflow accepts at most 1000 entities per log_batch call
MAX_PARAM_LEN = 6000


class TrackingUnavailableError(RuntimeError):
    """The configured tracking server cannot be reached: fail before any work starts."""


def default_tracking_uri(workdir: Path) -> str:
    """Embedded default: SQLite inside the run's working directory."""
    return f"sqlite:///{workdir.resolve() / 'mlflow.db'}"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> flat ``a.b.c`` string params (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LEN]
    return flat


class Tracker:
    """Thin wrapper over ``MlflowClient`` bound to one tracking URI."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)

    def check_reachable(self, timeout_s: float = 5.0) -> None:
        """Fail fast with a clear message when the tracking backend does not answer.

        An HTTP server is probed once on its ``/health`` endpoint, because the MLflow
        REST client retries with back-off for minutes before giving up.
        """
        try:
            if self.tracking_uri.startswith(("http://", "https://")):
                with urllib.request.urlopen(f"{self.tracking_uri.rstrip('/')}/health", timeout=timeout_s):
                    pass
            else:
                self.client.search_experiments(max_results=1)
        except Exception as exc:  # any transport or backend error means: cannot track
            raise TrackingUnavailableError(
                f"MLflow tracking at {self.tracking_uri!r} is unreachable: {exc}. "
                "Start it (`bertflow server start`) or point tracking_uri elsewhere."
            ) from exc

    def experiment(self, name: str, artifact_root: Path | None) -> str:
        """Id of experiment ``name``, created with ``artifact_root`` if it does not exist."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            return self.client.get_experiment_by_name(name).experiment_id

    def start_run(
        self,
        experiment_id: str,
        name: str,
        *,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        all_tags = {MLFLOW_RUN_NAME: name, **(tags or {})}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Terminate a run; status is FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, tags=items[i : i + _BATCH])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(_metric_key(k), float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(float(v))
        ]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + _BATCH])

    def log_files(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for f in files:
            if f.is_dir():
                self.client.log_artifacts(run_id, str(f), artifact_path=artifact_path)
            elif f.is_file():
                self.client.log_artifact(run_id, str(f), artifact_path=artifact_path)

    def artifact_uri(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.artifact_uri

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status


def _metric_key(name: str) -> str:
    """MLflow metric names allow alphanumerics and ``_-./ :``; map anything else to ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ :" else "_" for c in name)


class MlflowSink:
    """``MetricSink`` that writes to one MLflow run (``progress`` is not an MLflow concept)."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker = tracker
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)

    def progress(self, done: int, total: int) -> None:
        return None
