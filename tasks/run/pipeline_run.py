"""The pipeline's parent MLflow run: opened first, closed with the run's true outcome.

Every stage's child run hangs under it; it is tagged with the Prefect flow-run id so a
run can be followed from Prefect to MLflow and back. Before it opens, runs of the same
workdir that a killed process left RUNNING are closed as KILLED. The run's record in the
workdir (``tasks.run.run_record``, read by ``bertflow status``) opens and closes with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from prefect import runtime
from prefect.artifacts import create_table_artifact

from registry.lifecycle import close_orphans, tracked_run
from registry.tracking import Tracker, default_tracking_uri
from tasks.procs import is_alive
from tasks.run.config import PipelineConfig
from tasks.run.context import RunLink, StageContext
from tasks.run.contract import run_tags
from tasks.run.prefect_io import in_prefect_run
from tasks.run.run_record import RunHeader, recorded_run
from tasks.store.artifact import Artifact
from tasks.store.locks import workdir_lock

log = logging.getLogger(__name__)


def resolve_tracking_uri(config: PipelineConfig, workdir: Path) -> str:
    """tracking.tracking_uri, else $MLFLOW_TRACKING_URI (MLflow's convention), else SQLite in the workdir."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    return config.tracking.tracking_uri or from_env or default_tracking_uri(workdir)


def check_tracking(config: PipelineConfig, workdir: Path) -> str:
    """The run's tracking URI, after checking it answers (raises TrackingUnavailableError fast)."""
    uri = resolve_tracking_uri(config, workdir)
    if uri.startswith(("http://", "https://")):  # a SQLite store is created on first use
        Tracker(uri).check_reachable()
    return uri


@contextmanager
def pipeline_session(
    config: PipelineConfig, workdir: Path, link: RunLink | None = None
) -> Iterator[StageContext]:
    """The parent run of one pipeline run, ended FINISHED / FAILED / KILLED as the body ends.

    ``link``: the run is a child of ``link.parent_run_id`` (a sweep), named and tagged by it.
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(config, workdir)
    artifact_root = workdir / "mlartifacts" if uri.startswith("sqlite:") else None
    # Two runs must not create one SQLite store at once: MlflowClient runs the store's schema
    # migrations when it is constructed, so the Tracker is made under the lock too.
    with workdir_lock(workdir, "tracking-setup"):
        tracker = Tracker(uri)
        tracker.check_reachable()
        experiment_id = tracker.experiment(config.tracking.experiment, artifact_root)
        close_orphans(tracker, experiment_id, str(workdir), is_alive)
    flow_run_id = str(runtime.flow_run.id) if in_prefect_run() else ""
    ctx = StageContext(
        workdir=str(workdir), tracking_uri=uri, experiment_id=experiment_id, parent_run_id="",
        pruning=link.pruning if link else None,
    )  # fmt: skip
    tags = {"bertflow.preset": config.preset, "prefect.flow_run_id": flow_run_id or "none", **run_tags(ctx)}
    name, parent = (link.name, link.parent_run_id) if link else (f"pipeline-{config.preset}", None)
    tags |= link.tags if link else {}
    model_name = config.registry.model_name if config.registry.enabled else None
    with tracked_run(tracker, experiment_id, name, parent_run_id=parent, tags=tags) as run_id:
        header = RunHeader(run_id, config.preset, uri, experiment_id, model_name)
        with recorded_run(workdir, header):
            tracker.log_params(run_id, config.model_dump(mode="json"))
            yield ctx.model_copy(update={"parent_run_id": run_id})


def score_table(reports: Mapping[str, Artifact]) -> list[dict[str, object]]:
    """One row per metric, one column per report (e.g. pretrained vs random init)."""
    names = sorted({k for r in reports.values() for k, v in r.summary.items() if isinstance(v, int | float)})
    rows = []
    for name in names:
        row: dict[str, object] = {"metric": name}
        for label, report in reports.items():
            value = report.summary.get(name)
            row[label] = round(float(value), 2) if isinstance(value, int | float) else ""
        rows.append(row)
    return rows


def publish_scores(ctx: StageContext, reports: Mapping[str, Artifact]) -> list[dict[str, object]]:
    """Log the comparison to the parent run and, in a Prefect run, as a table artifact."""
    rows = score_table(reports)
    tracker = Tracker(ctx.tracking_uri)
    for label, report in reports.items():
        metrics = {f"{label}/{k}": v for k, v in report.summary.items() if isinstance(v, int | float)}
        tracker.log_metrics(ctx.parent_run_id, metrics, step=0)
    if in_prefect_run():
        create_table_artifact(rows, key="pipeline-scores", description="Dev scores per fine-tuning init")
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    """Plain-text table for the terminal."""
    if not rows:
        return "(no scores)"
    cols = list(rows[0])
    widths = [max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    line = "  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True))
    body = ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])
