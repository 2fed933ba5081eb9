"""The flows that deployments run: flat, typed parameters (a usable UI form), wiring only.

Each takes one ``PipelineParameters`` (preset enum + typed overrides) and turns it into
the validated ``PipelineConfig`` first, so a bad value fails the run before any stage
starts. Phases share the content-addressed workdir: the ``pretrain`` deployment reuses
the ``data`` deployment's outputs, and the full pipeline reuses both, so a nightly
pipeline run on unchanged corpus re-runs only fine-tuning, evaluation and registration.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.pipeline import PipelineResult, pipeline, pretrain_flow, run_data_flow
from flows.sweep import SweepResult, sweep_with_runner
from tasks.commands.compare import compare
from tasks.run.params import PipelineParameters
from tasks.run.pipeline_run import pipeline_session
from tasks.store.artifact import Artifact
from tasks.sweep.params import SweepParameters


@flow(name="bertflow-pipeline", validate_parameters=True)
def pipeline_deployment(params: PipelineParameters) -> PipelineResult:
    """The whole pipeline (data -> pre-train -> fine-tune + evaluate -> register) on a preset."""
    config = params.to_config()
    return pipeline.fn(config=config, workdir=str(Path(params.workdir).resolve()))


@flow(name="bertflow-data", validate_parameters=True)
def data_deployment(params: PipelineParameters) -> Artifact:
    """Data phase only: (demo data) -> ingest -> dedup -> tokenizer -> pack; returns the packed corpus."""
    config = params.to_config()
    with pipeline_session(config, Path(params.workdir)) as ctx:
        data = run_data_flow(config, ctx)
    return data.packed


@flow(name="bertflow-pretrain", validate_parameters=True)
def pretrain_deployment(params: PipelineParameters) -> Artifact:
    """Data (reused when finished) + pre-training; returns the checkpoint artifact."""
    config = params.to_config()
    with pipeline_session(config, Path(params.workdir)) as ctx:
        data = run_data_flow(config, ctx)
        checkpoint = pretrain_flow(config.pretrain, data, ctx)
    return checkpoint


@flow(name="bertflow-compare", validate_parameters=True)
def compare_deployment(
    tracking_uri: str,
    out_dir: str,
    model: str | None = None,
    experiment: str = "bertflow",
    limit: int = 10,
) -> str:
    """Compare a registered model's versions (``name`` or ``name@alias``) or the latest ``limit`` runs.

    Writes the table and plots to ``out_dir``, logs them to a ``compare`` MLflow run and
    publishes them as the ``model-comparison`` Prefect artifact; returns the markdown table.
    """
    return compare(tracking_uri, Path(out_dir), model=model, experiment=experiment, limit=limit).markdown


@flow(name="bertflow-sweep", validate_parameters=True)
def sweep_deployment(params: SweepParameters) -> SweepResult:
    """``bertflow sweep``: trials chosen by Optuna, ranked on the selection split, the best one gated."""
    return sweep_with_runner(params.parallel)(
        preset=params.preset, space_file=params.space, trials=params.trials,
        workdir=str(Path(params.workdir).resolve()), parallel=params.parallel, storage=params.storage,
        overrides=params.overrides,
    )  # fmt: skip
