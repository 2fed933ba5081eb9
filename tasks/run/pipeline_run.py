"""The pipeline's parent MLflow run: opened first, closed with the run's true outcome.

Every stage's child run hangs under it; it is tagged with the Prefect flow-run id so a
run can be followed from Prefect to MLflow and back. ``pipeline_run`` is a context
manager so that an exception or a kill can never leave the parent run RUNNING.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from prefect import runtime
from prefect.artifacts import create_table_artifact

from registry.tracking import Tracker, default_tracking_uri
from tasks.run.config import PipelineConfig
from tasks.run.contract import StageContext, in_prefect_run
from tasks.store.artifact import Artifact

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


def open_pipeline_run(config: PipelineConfig, workdir: Path) -> StageContext:
    """Create the experiment (artifacts under the workdir by default) and the parent run."""
    workdir.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(config, workdir)
    tracker = Tracker(uri)
    tracker.check_reachable()
    artifact_root = workdir / "mlartifacts" if uri.startswith("sqlite:") else None
    experiment_id = tracker.experiment(config.tracking.experiment, artifact_root)
    flow_run_id = str(runtime.flow_run.id) if in_prefect_run() else ""
    run_id = tracker.start_run(
        experiment_id,
        f"pipeline-{config.preset}",
        tags={"bertflow.preset": config.preset, "prefect.flow_run_id": flow_run_id or "none"},
    )
    tracker.log_params(run_id, config.model_dump(mode="json"))
    return StageContext(
        workdir=str(workdir.resolve()), tracking_uri=uri, experiment_id=experiment_id, parent_run_id=run_id
    )


@contextmanager
def pipeline_run(ctx: StageContext) -> Iterator[Tracker]:
    """Terminate the parent run FINISHED, FAILED or KILLED according to how the body ends."""
    tracker = Tracker(ctx.tracking_uri)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        tracker.end_run(ctx.parent_run_id, status)


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
