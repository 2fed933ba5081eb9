"""The stage contract's Prefect side: ``stage_task(STAGE)`` is a stage's ``@task``.

Every stage declares a ``tasks.store.stage.Stage`` (config type + pure build function);
this factory turns it into its Prefect task. The task opens the stage's child MLflow
run under the pipeline run (``registry.lifecycle.tracked_run``), logs the config as
params and lineage tags (upstream fingerprints and the runs that produced them), runs the
stage (which fingerprints, verifies or builds its artifact), logs the artifact's files
and summary and publishes a Prefect summary. No stage writes this wrapper itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from registry.lifecycle import OWNER_TAG, WORKDIR_TAG, tracked_run
from registry.tracking import MlflowSink, Tracker
from tasks.procs import identity
from tasks.run.context import StageContext
from tasks.run.prefect_io import PrefectProgress, publish_stage_summary, retry_on_io
from tasks.store.artifact import Artifact
from tasks.store.stage import Stage


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


def run_tags(ctx: StageContext) -> dict[str, str]:
    """Tags every run of a pipeline carries: its workdir and its owning process (orphan detection)."""
    return {WORKDIR_TAG: ctx.workdir, OWNER_TAG: identity()}


def numeric_summary(summary: Mapping[str, object]) -> dict[str, float]:
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def run_stage(
    stage: Stage, cfg: BaseModel, inputs: Sequence[Artifact], ctx: StageContext, run_name: str | None = None
) -> Artifact:
    """Run ``stage`` inside a child MLflow run of the pipeline run; returns its artifact."""
    name = run_name or stage.name
    tracker = Tracker(ctx.tracking_uri)
    tags = {"bertflow.stage": stage.name, **run_tags(ctx), **lineage_tags(inputs)}
    with tracked_run(tracker, ctx.experiment_id, name, parent_run_id=ctx.parent_run_id, tags=tags) as run_id:
        tracker.log_params(run_id, cfg.model_dump(mode="json"))
        sink = StageSink(MlflowSink(tracker, run_id), PrefectProgress(name))
        destination = ctx.tracking_uri if stage.needs_destination else None
        artifact = stage(cfg, *inputs, workdir=ctx.path, sink=sink, run_id=run_id, destination=destination)
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
            tracker.log_files(run_id, [artifact.file(f) for f in stage.log_files])
        publish_stage_summary(ctx, name, artifact, run_id)
    return artifact


def stage_task(stage: Stage) -> Task:
    """The Prefect task of ``stage``: ``task(cfg, inputs, ctx, run_name=None) -> Artifact``."""

    def run(
        cfg: BaseModel, inputs: tuple[Artifact, ...], ctx: StageContext, run_name: str | None = None
    ) -> Artifact:
        return run_stage(stage, cfg, inputs, ctx, run_name)

    run.__name__ = run.__qualname__ = f"{stage.name.replace('-', '_')}_task"
    retries = {"retries": 2, "retry_delay_seconds": 10, "retry_condition_fn": retry_on_io}
    return task(name=stage.name, cache_policy=NO_CACHE, **(retries if stage.retry_on_io else {}))(run)
