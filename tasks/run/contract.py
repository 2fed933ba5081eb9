"""What every stage's thin ``@task`` shares: an MLflow child run around the pure function.

``run_tracked`` opens the stage's child run under the pipeline's parent run, logs the
stage config as params and lineage tags (upstream fingerprints and the MLflow runs that
produced them), hands the pure function a metric sink, logs the artifact's files and
summary, publishes a Prefect summary, and terminates the run FINISHED / FAILED / KILLED.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.objects import State
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, ConfigDict

from registry.tracking import MlflowSink, Tracker
from tasks.sink import MetricSink
from tasks.store.artifact import Artifact

log = logging.getLogger(__name__)


class StageContext(BaseModel):
    """Where a pipeline run writes and tracks; the same for every stage of one run."""

    model_config = ConfigDict(frozen=True)

    workdir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    @property
    def path(self) -> Path:
        return Path(self.workdir)


TRANSIENT_ERRORS = (ConnectionError, TimeoutError)


def retry_on_io(task: object, task_run: object, state: State) -> bool:
    """Prefect retry condition: retry network/time-out failures only, never bad input."""
    return isinstance(state.result(raise_on_failure=False), TRANSIENT_ERRORS)


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def in_prefect_run() -> bool:
    try:
        get_run_context()
    except MissingContextError:
        return False
    return True


class PrefectProgress:
    """Mirrors ``progress`` into a Prefect progress artifact (only inside a Prefect run)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.artifact_id = None
        self.last_pct = -1.0

    def update(self, done: int, total: int) -> None:
        pct = round(100.0 * done / max(total, 1), 0)
        if pct == self.last_pct or not in_prefect_run():
            return
        self.last_pct = pct
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(pct, key=artifact_key(f"{self.stage}-progress"))
        else:
            update_progress_artifact(self.artifact_id, pct)


class StageSink:
    """Metric sink for a stage: metrics to its MLflow run, progress to Prefect."""

    def __init__(self, mlflow: MlflowSink, progress: PrefectProgress) -> None:
        self.mlflow = mlflow
        self.prefect = progress

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step)

    def progress(self, done: int, total: int) -> None:
        self.prefect.update(done, total)


def lineage_tags(inputs: Sequence[Artifact]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for a in inputs:
        tags[f"bertflow.input.{a.stage}.fingerprint"] = a.fingerprint
        tags[f"bertflow.input.{a.stage}.path"] = a.path
        if a.producer_run_id:
            tags[f"bertflow.input.{a.stage}.run_id"] = a.producer_run_id
    return tags


def numeric_summary(summary: Mapping[str, object]) -> dict[str, float]:
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def summary_markdown(stage: str, artifact: Artifact, run_id: str) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(artifact.summary.items()))
    cached = f" (reused from run `{artifact.producer_run_id}`)" if artifact.cached else ""
    return (
        f"# {stage}\n\nArtifact `{artifact.path}`{cached}\n\n"
        f"fingerprint `{artifact.fingerprint}` · MLflow run `{run_id}`\n\n"
        f"| field | value |\n|---|---|\n{rows}\n"
    )


def publish_stage_summary(ctx: StageContext, name: str, artifact: Artifact, run_id: str) -> None:
    """Prefect artifacts for a stage: a markdown summary and, with an MLflow server, a link."""
    create_markdown_artifact(
        summary_markdown(name, artifact, run_id),
        key=artifact_key(f"{name}-summary"),
        description=f"{name} stage summary",
    )
    if ctx.tracking_uri.startswith(("http://", "https://")):
        url = f"{ctx.tracking_uri.rstrip('/')}/#/experiments/{ctx.experiment_id}/runs/{run_id}"
        create_link_artifact(url, link_text=f"MLflow run of {name}", key=artifact_key(f"{name}-mlflow"))


def run_tracked(
    ctx: StageContext,
    stage: str,
    config: BaseModel,
    inputs: Sequence[Artifact],
    compute: Callable[[MetricSink, str], Artifact],
    files: Sequence[str] = (),
    run_name: str | None = None,
) -> Artifact:
    """Run ``compute(sink, run_id)`` inside a child MLflow run of the pipeline run.

    ``files`` are names inside the artifact directory logged as MLflow artifacts (only
    when the stage actually ran: a reused artifact points at its producer run instead).
    """
    tracker = Tracker(ctx.tracking_uri)
    run_id = tracker.start_run(
        ctx.experiment_id,
        run_name or stage,
        parent_run_id=ctx.parent_run_id,
        tags={"bertflow.stage": stage, **lineage_tags(inputs)},
    )
    sink = StageSink(MlflowSink(tracker, run_id), PrefectProgress(run_name or stage))
    status = "FAILED"
    try:
        tracker.log_params(run_id, config.model_dump(mode="json"))
        artifact = compute(sink, run_id)
        tracker.set_tags(
            run_id,
            {
                "bertflow.fingerprint": artifact.fingerprint,
                "bertflow.artifact_path": artifact.path,
                "bertflow.cached": artifact.cached,
                "bertflow.producer_run_id": artifact.producer_run_id or run_id,
            },
        )
        tracker.log_metrics(run_id, numeric_summary(artifact.summary), step=0)
        if not artifact.cached:
            tracker.log_files(run_id, [artifact.file(name) for name in files])
        if in_prefect_run():
            publish_stage_summary(ctx, run_name or stage, artifact, run_id)
        status = "FINISHED"
        return artifact
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        tracker.end_run(run_id, status)
