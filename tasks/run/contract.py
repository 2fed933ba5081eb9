"""The stage contract's Prefect side: ``stage_task(STAGE)`` is a stage's ``@task``.

Every stage declares a ``tasks.store.stage.Stage`` (config type + pure build function);
this factory turns it into its Prefect task. The task opens the stage's child MLflow
run under the pipeline run (``registry.lifecycle.tracked_run``), logs the config as
params and lineage tags (upstream fingerprints and the runs that produced them), runs the
stage (which fingerprints, verifies or builds its artifact), logs the artifact's files
and summary and publishes a Prefect summary. No stage writes this wrapper itself.

Its metrics and progress go to MLflow, Prefect and the terminal alike (``StageSink``), and
its outcome (ran / reused / failed, fingerprint, wall time) to the pipeline run's record in
the workdir (``tasks.run.run_record``), which ``bertflow status`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from registry.lifecycle import OWNER_TAG, WORKDIR_TAG, tracked_run
from registry.tracking import MlflowSink, Tracker
from tasks.procs import identity
from tasks.progress import TerminalSink
from tasks.run.context import StageContext
from tasks.run.prefect_io import PrefectProgress, publish_stage_summary, retry_on_io
from tasks.run.pruning import TrialReporter
from tasks.run.run_record import FAILED, KILLED, RAN, REUSED, StageEntry, record_stage
from tasks.run.shard_tasks import PrefectShardMap
from tasks.sink import MetricSink
from tasks.store.artifact import Artifact
from tasks.store.digest import json_digest
from tasks.store.stage import Stage


class StageSink:
    """A stage's sink: metrics to its MLflow run and the terminal, progress to Prefect and the terminal."""

    def __init__(self, mlflow: MlflowSink, progress: PrefectProgress, terminal: TerminalSink) -> None:
        self.mlflow = mlflow
        self.prefect = progress
        self.terminal = terminal

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step)
        self.terminal.log_metrics(metrics, step)

    def progress(self, done: int, total: int) -> None:
        self.prefect.update(done, total)
        self.terminal.progress(done, total)


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
    """Run ``stage`` inside a child MLflow run of the pipeline run; returns its artifact.

    The stage's outcome goes to the run record as it starts and ends (with the fingerprint
    it was building when it failed, so ``bertflow status`` can name its scratch state).
    """
    entry = StageEntry(name=run_name or stage.name, stage=stage.name)
    note(ctx, entry)
    try:
        artifact = tracked_stage(stage, cfg, inputs, ctx, entry)
    except BaseException as exc:
        outcome = FAILED if isinstance(exc, Exception) else KILLED  # interrupts are not Exceptions
        error = f"{type(exc).__name__}: {exc}"[:500]
        note(ctx, entry.end(outcome, error=error, **planned(stage, cfg, inputs, ctx)))
        raise
    outcome = REUSED if artifact.cached else RAN
    note(ctx, entry.end(outcome, fingerprint=artifact.fingerprint, artifact_path=artifact.path))
    return artifact


def note(ctx: StageContext, entry: StageEntry) -> None:
    """Write ``entry`` to the pipeline run's record (a stage run outside a pipeline run has none)."""
    if ctx.parent_run_id:
        record_stage(ctx.path, ctx.parent_run_id, entry)


def planned(stage: Stage, cfg: BaseModel, inputs: Sequence[Artifact], ctx: StageContext) -> dict[str, str]:
    """The fingerprint and directory a failed stage was building (empty if even that fails)."""
    destination = ctx.tracking_uri if stage.needs_destination else None
    try:
        fp = json_digest(stage.key(cfg, inputs, ctx.path.resolve(), destination))
    except Exception:  # e.g. the input file it failed on cannot be hashed either
        return {}
    return {"fingerprint": fp, "artifact_path": str(stage.directory(cfg, ctx.path.resolve(), fp))}


def tracked_stage(
    stage: Stage, cfg: BaseModel, inputs: Sequence[Artifact], ctx: StageContext, entry: StageEntry
) -> Artifact:
    """The stage call inside its MLflow child run, with its params, tags, metrics and files."""
    name = entry.name
    tracker = Tracker(ctx.tracking_uri)
    tags = {"bertflow.stage": stage.name, **run_tags(ctx), **lineage_tags(inputs)}
    with (
        tracked_run(tracker, ctx.experiment_id, name, parent_run_id=ctx.parent_run_id, tags=tags) as run_id,
        TerminalSink(name) as terminal,
    ):
        entry.mlflow_run_id = run_id
        tracker.log_params(run_id, cfg.model_dump(mode="json"))
        sink: MetricSink = StageSink(MlflowSink(tracker, run_id), PrefectProgress(name), terminal)
        if ctx.pruning is not None and ctx.pruning.stage == stage.name:
            sink = TrialReporter(sink, ctx.pruning)  # a sweep trial: hopeless pre-training stops early
        destination = ctx.tracking_uri if stage.needs_destination else None
        artifact = stage(
            cfg,
            *inputs,
            workdir=ctx.path,
            sink=sink,
            run_id=run_id,
            destination=destination,
            shard_map=PrefectShardMap(),
        )
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
