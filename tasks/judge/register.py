"""Register stage: put a fine-tuned, evaluated model into the MLflow model registry.

The stage refuses to register anything it cannot vouch for: the checkpoint must hold its
weights, config and tokenizer, and the evaluation report must carry a finite score for
the gate metric. It logs the checkpoint files into its own run (so the registered
version's source never depends on whether an upstream stage was reused from cache),
registers a version as ``challenger`` and lets the gate decide on ``champion``
(``registry.model_registry.register_and_gate``):

- the score that gates is the registered model's own (with several fine-tuning seeds: the
  kept median seed's, not the per-metric median of the report), on the report's suite;
- a challenger that does not beat its own random-init baseline (when one was run on the
  same suite) is registered but never promoted;
- a champion scored on another suite is re-scored on this one first, by evaluating the
  registered champion model (``tasks.judge.by_uri``).

The registry URI is the stage's destination: it is part of the fingerprint, so a new
tracking server gets the model registered there instead of a reused record of another.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from registry.model_registry import (
    CHAMPION,
    NotComparableError,
    Rescore,
    Score,
    alias_version,
    register_and_gate,
)
from registry.tracking import Tracker
from tasks.downstream.modelset import MEMBERS
from tasks.downstream.scoring import MissingHeadError
from tasks.judge.by_uri import evaluate_model_uri
from tasks.judge.evaluation import REPORT, EvalConfig
from tasks.store.artifact import MANIFEST, Artifact
from tasks.store.ownership import OWNER_MARK
from tasks.store.stage import Job, Stage

CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json")
SEEDS_DIR = "seeds"
REGISTRATION = "registration.json"
RESCORE_DIR = "rescore"  # <workdir>/rescore/: champion models evaluated on a challenger's suite


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
        description="Report metric compared with the champion's to decide promotion: glue_avg, "
        "or TASK/metric (e.g. WikiANN-en/f1).",
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


def gate_value(report: dict, metric: str) -> float:
    """The registered model's own score: the kept (median) seed's when several seeds were trained."""
    own = report["per_seed"][str(report["median_seed"])] if "per_seed" in report else report
    task, _, name = metric.rpartition("/")
    score = own.get("per_task", {}).get(task, {}).get(name) if task else own.get(metric)
    if not isinstance(score, int | float) or not math.isfinite(score):
        raise RegistrationError(f"evaluation report has no finite {metric!r} (got {score!r}): not registered")
    return float(score)


def check_registrable(checkpoint: Path, report: dict, metric: str) -> float:
    """The gate score, after checking that every checkpoint of the set and the report are complete."""
    for directory in model_dirs(checkpoint):
        missing = [f for f in CHECKPOINT_FILES if not (directory / f).is_file()]
        if missing:
            raise RegistrationError(f"checkpoint {directory} lacks {', '.join(missing)}: not registering it")
    return gate_value(report, metric)


def read_report(report: Artifact) -> dict:
    return json.loads(report.file(REPORT).read_text())


def baseline_value(report: dict, baseline: Artifact | None, metric: str) -> float | None:
    """The random-init baseline's score on the same suite (None when no baseline was run)."""
    if baseline is None:
        return None
    theirs = read_report(baseline)
    if theirs["suite"]["fingerprint"] != report["suite"]["fingerprint"]:
        raise RegistrationError("the random-init baseline was evaluated on another suite: not comparable")
    return gate_value(theirs, metric)


def champion_rescorer(cfg: RegistryConfig, report: dict, tracking_uri: str, workdir: Path) -> Rescore:
    """Score a registered version on the challenger's suite, by evaluating it like any model URI."""
    eval_cfg = EvalConfig.model_validate(report["suite"]["config"])

    def rescore(version: str) -> float:
        try:
            uri = f"models:/{cfg.model_name}/{version}"
            scored = evaluate_model_uri(uri, eval_cfg, workdir / RESCORE_DIR, tracking_uri=tracking_uri)
        except MissingHeadError as err:
            raise NotComparableError(str(err)) from err
        return gate_value(scored, cfg.gate_metric)

    return rescore


def log_model(tracker: Tracker, run_id: str, checkpoint: Artifact, report: Artifact) -> None:
    """The kept model set's files (not the other seeds', not bookkeeping) and the report, into the run."""
    skip = {SEEDS_DIR, MANIFEST, OWNER_MARK}
    for path in sorted(p for p in checkpoint.dir.iterdir() if p.name not in skip):
        tracker.log_files(run_id, [path], artifact_path=f"model/{path.name}" if path.is_dir() else "model")
    tracker.log_files(run_id, [report.file(REPORT)], artifact_path="evaluation")


def build_register(
    cfg: RegistryConfig,
    checkpoint: Artifact,
    report: Artifact,
    *baseline: Artifact,
    out: Path,
    job: Job,
) -> dict:
    """Register ``checkpoint`` (scored in ``report``) from the stage's MLflow run at ``job.destination``."""
    if job.run_id is None or job.destination is None:
        raise RegistrationError("registering needs the MLflow run of the stage and the registry URI")
    tracker = Tracker(job.destination)
    scores = read_report(report)
    value = check_registrable(checkpoint.dir, scores, cfg.gate_metric)
    log_model(tracker, job.run_id, checkpoint, report)
    reg = register_and_gate(
        tracker,
        name=cfg.model_name,
        source_run_id=job.run_id,
        artifact_path="model",
        score=Score(cfg.gate_metric, value, scores["suite"]["fingerprint"]),
        min_improvement=cfg.min_improvement,
        baseline_score=baseline_value(scores, baseline[0] if baseline else None, cfg.gate_metric),
        rescore=champion_rescorer(cfg, scores, job.destination, job.workdir),
        attempt=job.fingerprint,
        tags={
            "bertflow.checkpoint_fingerprint": checkpoint.fingerprint,
            "bertflow.report_fingerprint": report.fingerprint,
            "bertflow.suite.tasks": ",".join(scores["suite"]["tasks"]),
        },
    )
    summary = {
        "model_name": reg.name,
        "version": reg.version,
        "registered_on": job.destination,
        "metric": cfg.gate_metric,
        "score": reg.score.value,
        "suite": reg.score.suite,
        "baseline_score": reg.baseline_score,
        "champion_version": reg.decision.champion_version,
        "champion_score": reg.decision.champion_score,
        "champion_rescored": reg.decision.champion_rescored,
        "promoted": reg.decision.promoted,
        "reason": reg.decision.reason,
    }
    (out / REGISTRATION).write_text(json.dumps(summary, indent=2))
    return summary


def closing_lines(registration: Artifact, tracking_uri: str) -> list[str]:
    """What this run did in the registry, in words: registered now, or reused from an earlier run."""
    s = registration.summary
    name, version, uri = s["model_name"], s["version"], s["registered_on"]
    outcome = "promoted to champion" if s["promoted"] else "not promoted"
    if registration.cached:
        reason = s["reason"]
        lines = [f"Reused {name} v{version}, registered on {uri} by an earlier run ({outcome}: {reason})."]
    else:
        lines = [f"Registered {name} v{version} on {uri} as challenger; {outcome}: {s['reason']}."]
    champion = alias_version(Tracker(tracking_uri), name, CHAMPION)
    lines.append(f"Champion of {name} now: v{champion}." if champion else f"{name} has no champion.")
    return lines


register = Stage("register", build_register, needs_destination=True, log_files=(REGISTRATION,))
