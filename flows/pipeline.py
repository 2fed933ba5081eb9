"""Prefect flows: the pipeline and its phases. Wiring only: every step is a task call."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from pydantic import BaseModel

from tasks.data.dedup import DedupConfig
from tasks.data.ingest import IngestConfig
from tasks.data.pack import PackConfig
from tasks.data.tokenizer import TokenizerConfig
from tasks.demo.stage import DemoConfig
from tasks.judge.evaluation import EvalConfig
from tasks.run.config import PipelineConfig
from tasks.run.context import RunLink, StageContext
from tasks.run.pipeline_run import pipeline_session, publish_scores
from tasks.run.shard_tasks import data_task_runner
from tasks.run.stages import (
    dedup_task,
    demo_data_task,
    evaluate_task,
    finetune_task,
    ingest_task,
    pack_task,
    pretrain_task,
    register_task,
    tokenizer_task,
)
from tasks.store.artifact import Artifact
from tasks.train.finetune_config import FinetuneConfig
from tasks.train.pretrain_config import PretrainConfig


class DataArtifacts(BaseModel):
    tokenizer: Artifact
    packed: Artifact


class PipelineResult(BaseModel):
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    scores: list[dict[str, object]]
    summaries: dict[str, dict[str, object]]
    pretrain_summary: dict[str, object]
    registration: Artifact | None


@flow(name="data")
def data_flow(
    ingest: IngestConfig,
    dedup: DedupConfig,
    tokenizer: TokenizerConfig,
    pack: PackConfig,
    ctx: StageContext,
    demo: DemoConfig | None = None,
) -> DataArtifacts:
    """1. (demo only) generate synthetic data  2. ingest  3. dedup  4. train the tokenizer  5. pack.

    Ingest, dedup and pack map their shards as Prefect tasks on this flow's task runner
    (``tasks.run.shard_tasks``): threads here by default, or a Dask cluster.
    """
    if demo is not None:
        demo_data_task(demo, (), ctx)
    docs = dedup_task(dedup, (ingest_task(ingest, (), ctx),), ctx)
    tok = tokenizer_task(tokenizer, (docs,), ctx)
    return DataArtifacts(tokenizer=tok, packed=pack_task(pack, (docs, tok), ctx))


def run_data_flow(config: PipelineConfig, ctx: StageContext) -> DataArtifacts:
    """The data flow, its shards on the task runner ``config.task_runner`` names."""
    on_runner = data_flow.with_options(task_runner=data_task_runner(config.task_runner))
    return on_runner(config.ingest, config.dedup, config.tokenizer, config.pack, ctx, config.demo)


@flow(name="data-only")
def data_pipeline(config: PipelineConfig, workdir: str) -> DataArtifacts:
    """The data stages alone, tracked as a pipeline run of their own (the data benchmark, tests)."""
    with pipeline_session(config, Path(workdir)) as ctx:
        return run_data_flow(config, ctx)


@flow(name="pretrain")
def pretrain_flow(cfg: PretrainConfig, data: DataArtifacts, ctx: StageContext) -> Artifact:
    """Pre-train the encoder with dynamic-masking MLM on the packed corpus."""
    return pretrain_task(cfg, (data.packed, data.tokenizer), ctx)


@flow(name="finetune-evaluate")
def finetune_evaluate_flow(
    finetune: FinetuneConfig, evaluate: EvalConfig, checkpoint: Artifact, ctx: StageContext, label: str
) -> tuple[Artifact, Artifact]:
    """1. multi-task fine-tuning  2. dev-set evaluation (GLUE metrics, SQuAD EM/F1)."""
    tuned = finetune_task(finetune, (checkpoint,), ctx, run_name=f"finetune-{label}")
    return tuned, evaluate_task(evaluate, (tuned,), ctx, run_name=f"evaluate-{label}")


@flow(name="pipeline")
def pipeline(config: PipelineConfig, workdir: str, link: RunLink | None = None) -> PipelineResult:
    """corpus -> model registry, tracked as one MLflow parent run with a child run per stage.

    1. open the parent MLflow run (tagged with this flow run's id)
    2. data: (demo data) -> ingest -> dedup -> tokenizer -> pack
    3. pre-train
    4. fine-tune + evaluate the pre-trained model (and, for the transfer baseline, a
       randomly initialised one on the same budget)
    5. register the pre-trained model's fine-tuned checkpoint; the gate promotes it only if
       it beats the champion on the same suite (and its own random-init baseline)

    ``link`` makes the MLflow run a named child of another run (a sweep's trial).
    """
    with pipeline_session(config, Path(workdir), link) as ctx:
        data = run_data_flow(config, ctx)
        checkpoint = pretrain_flow(config.pretrain, data, ctx)
        tuned, report = finetune_evaluate_flow(
            config.finetune, config.evaluate, checkpoint, ctx, "pretrained"
        )
        reports = {"pretrained": report}
        if config.baseline_random_init:
            baseline = config.finetune.model_copy(update={"init": "random"})
            _, reports["random_init"] = finetune_evaluate_flow(
                baseline, config.evaluate, checkpoint, ctx, "random"
            )
        scores = publish_scores(ctx, reports)
        registration = None
        if config.registry.enabled:
            registration = register_task(config.registry, (tuned, *reports.values()), ctx)
    return PipelineResult(
        parent_run_id=ctx.parent_run_id,
        experiment_id=ctx.experiment_id,
        tracking_uri=ctx.tracking_uri,
        scores=scores,
        summaries={label: dict(report.summary) for label, report in reports.items()},
        pretrain_summary=dict(checkpoint.summary),
        registration=registration,
    )
