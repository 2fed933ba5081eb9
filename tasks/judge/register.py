"""Register stage: put a fine-tuned, evaluated model into the MLflow model registry.

The stage refuses to register anything it cannot vouch for: the checkpoint must hold its
weights, config and tokenizer, and the evaluation report must carry a finite score for
the gate metric. It logs the checkpoint files into its own run (so the registered
version's source never depends on whether an upstream stage was reused from cache),
registers a version as ``challenger`` and promotes it to ``champion`` when it beats the
current champion (``registry.model_registry.register_and_gate``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from registry.model_registry import register_and_gate
from registry.tracking import Tracker
from tasks.downstream.modelset import MEMBERS
from tasks.run.contract import StageContext, run_tracked
from tasks.store.artifact import MANIFEST, Artifact, build_stage

STAGE = "register"
VERSION = "1"
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json")
SEEDS_DIR = "seeds"


class RegistryConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(
        "bertflow-encoder",
        min_length=1,
        max_length=200,
        description="Registered model name in the MLflow model registry.",
    )
    gate_metric: str = Field(
        "glue_avg",
        description="Report metric compared with the champion's to decide promotion.",
    )
    min_improvement: float = Field(
        0.0, ge=0.0, le=100.0, description="Points the challenger must gain over the champion to be promoted."
    )
    enabled: bool = Field(True, description="Register the model at the end of the pipeline.")


class RegistrationError(ValueError):
    """The model or its report is not fit to be registered."""


def model_dirs(checkpoint: Path) -> list[Path]:
    """Every checkpoint dir of a fine-tuned model set: the top level and its per-task members."""
    members = checkpoint / MEMBERS
    listed = json.loads(members.read_text()).values() if members.is_file() else []
    dirs = [checkpoint / rel for rel in sorted(set(listed))]
    if not members.is_file() or (checkpoint / "config.json").is_file():
        dirs.insert(0, checkpoint)
    return dirs


def check_registrable(checkpoint: Path, report: dict, metric: str) -> float:
    """The gate score, after checking that every checkpoint of the set and the report are complete."""
    for directory in model_dirs(checkpoint):
        missing = [f for f in CHECKPOINT_FILES if not (directory / f).is_file()]
        if missing:
            raise RegistrationError(f"checkpoint {directory} lacks {', '.join(missing)}: not registering it")
    score = report.get(metric)
    if not isinstance(score, int | float) or not math.isfinite(score):
        raise RegistrationError(f"evaluation report has no finite {metric!r} (got {score!r}): not registered")
    return float(score)


def register(
    cfg: RegistryConfig,
    checkpoint: Artifact,
    report: Artifact,
    *,
    workdir: Path,
    tracker: Tracker,
    run_id: str,
) -> Artifact:
    """Register ``checkpoint`` (evaluated in ``report``) from MLflow run ``run_id``."""

    def build(out: Path) -> dict:
        scores = json.loads(report.file("report.json").read_text())
        score = check_registrable(checkpoint.dir, scores, cfg.gate_metric)
        # seeds/ holds the non-median seeds' models: the top level already is the kept one
        model_files = [p for p in sorted(checkpoint.dir.iterdir()) if p.name not in (SEEDS_DIR, MANIFEST)]
        for path in model_files:
            artifact_path = f"model/{path.name}" if path.is_dir() else "model"
            tracker.log_files(run_id, [path], artifact_path=artifact_path)
        tracker.log_files(run_id, [report.file("report.json")], artifact_path="evaluation")
        reg = register_and_gate(
            tracker,
            name=cfg.model_name,
            source_run_id=run_id,
            artifact_path="model",
            metric=cfg.gate_metric,
            score=score,
            min_improvement=cfg.min_improvement,
            tags={
                "bertflow.checkpoint_fingerprint": checkpoint.fingerprint,
                "bertflow.report_fingerprint": report.fingerprint,
            },
        )
        summary = {
            "model_name": reg.name,
            "version": reg.version,
            "score": reg.score,
            "champion_score": reg.champion_score,
            "promoted": reg.promoted,
            "reason": reg.reason,
        }
        (out / "registration.json").write_text(json.dumps(summary, indent=2))
        return summary

    return build_stage(
        workdir=workdir,
        stage=STAGE,
        version=VERSION,
        config=cfg,
        inputs=[checkpoint, report],
        build=build,
        run_id=run_id,
    )


@task(name="register", cache_policy=NO_CACHE)
def register_task(cfg: RegistryConfig, checkpoint: Artifact, report: Artifact, ctx: StageContext) -> Artifact:
    tracker = Tracker(ctx.tracking_uri)
    return run_tracked(
        ctx,
        STAGE,
        cfg,
        [checkpoint, report],
        lambda sink, run_id: register(
            cfg, checkpoint, report, workdir=ctx.path, tracker=tracker, run_id=run_id
        ),
        files=["registration.json"],
    )
