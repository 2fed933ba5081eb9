"""Evaluate stage: run a fine-tuned checkpoint on every task's dev set(s) and write a report.

Scoring itself is ``tasks.downstream.scoring`` (official GLUE / SQuAD definitions, 0-100
scale). The report carries the per-task numbers, the GLUE average (inside each task
first, then across tasks) without WNLI and, when WNLI was evaluated, with it, each with a
name that lists the tasks it covers, and SQuAD EM / F1. Every prediction is written to
``predictions/<task>.jsonl`` so a score can be audited.

The report also names its **suite**: the tasks, the scoring settings, the content hash
of every dev file and the digest of the scoring code. Two scores are comparable only when
their suites are equal; the promotion gate relies on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from tasks.downstream.features import task_file
from tasks.downstream.metrics.average import glue_average, glue_average_name
from tasks.downstream.modelset import median_seed, seed_sets
from tasks.downstream.scoring import ScoringConfig, evaluate_model_set
from tasks.downstream.tasks import TASKS, check_task_names, get_task
from tasks.store.artifact import Artifact
from tasks.store.digest import code_digest, json_digest, sha256_file
from tasks.store.stage import Job, Stage

log = logging.getLogger(__name__)

REPORT = "report.json"
SCORING_CODE = "tasks.downstream.scoring"
NOT_SCORE_SETTINGS = frozenset({"data_dir", "batch_size", "tasks"})  # where / how fast, not what is scored


class EvalConfig(ScoringConfig):
    """Dev-set evaluation: which tasks, scored how (flat and typed so Prefect renders a form)."""

    tasks: tuple[str, ...] = Field(
        ("CoLA", "SST-2", "MRPC", "STS-B", "RTE"),
        min_length=1,
        description=f"Tasks to evaluate (each needs a head in the checkpoint): {', '.join(TASKS)}.",
    )

    @field_validator("tasks")
    @classmethod
    def _known_unique(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        return check_task_names(tasks)


def dev_files(cfg: EvalConfig, workdir: Path | None = None) -> list[Path]:
    """Every file the evaluation reads: the dev files, or the train files a selection split is cut from."""
    specs = [get_task(name) for name in cfg.tasks]
    if cfg.split == "selection":
        return [task_file(cfg.data_dir, s, s.train_file) for s in specs]
    return [task_file(cfg.data_dir, s, split.file) for s in specs for split in s.dev_splits]


def suite(cfg: EvalConfig) -> dict[str, Any]:
    """What makes two scores comparable: tasks, scoring settings, dev-file contents, scoring code.

    Dev files are named relative to the data dir, so the same data in another place is
    the same suite; their sha256 tells edited data apart.
    """
    root = Path(cfg.data_dir)  # files named as the data dir lays them out, not where a symlink resolves
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in dev_files(cfg)}
    settings = cfg.model_dump(mode="json", exclude=set(NOT_SCORE_SETTINGS))
    payload = {"tasks": list(cfg.tasks), "settings": settings, "dev_files": files}
    payload["scoring_code"] = code_digest(SCORING_CODE)
    config = cfg.model_dump(mode="json")
    return {"fingerprint": json_digest(payload), "tasks": list(cfg.tasks), "config": config}


def median_metrics(per_seed: Mapping[int, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per task and metric, the median over seeds (small GLUE tasks swing a lot between seeds)."""
    first = next(iter(per_seed.values()))
    return {
        task: {name: float(np.median([runs[task][name] for runs in per_seed.values()])) for name in metrics}
        for task, metrics in first.items()
    }


def write_predictions(directory: Path, rows: Mapping[str, list[dict]]) -> None:
    """One ``<task>.jsonl`` per task: every dev prediction next to its gold label, for error analysis."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, task_rows in rows.items():
        with (directory / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in task_rows)


def build_report(per_task: dict[str, dict[str, float]], dev_examples: dict[str, dict[str, int]]) -> dict:
    """report.json: per-task metrics, GLUE averages with their names, SQuAD, and dev-set sizes."""
    report: dict[str, Any] = {"per_task": per_task, "dev_examples": dev_examples}
    if any(TASKS[t].is_glue and t != "WNLI" for t in per_task):
        report["glue_avg"] = glue_average(per_task, include_wnli=False)
        report["glue_avg_name"] = glue_average_name(per_task, include_wnli=False)
    if "WNLI" in per_task:
        report["glue_avg_with_wnli"] = glue_average(per_task, include_wnli=True)
        report["glue_avg_with_wnli_name"] = glue_average_name(per_task, include_wnli=True)
    if "SQuAD" in per_task:
        report["squad"] = per_task["SQuAD"]
    if "SQuAD-v2" in per_task:
        report["squad_v2"] = per_task["SQuAD-v2"]
    return report


def flat_summary(report: dict) -> dict[str, float]:
    """Numbers only, flattened for metric logging: "SST-2/accuracy", "glue_avg", "SQuAD/f1", ..."""
    out = {
        f"{task}/{name}": value
        for task, metrics in report["per_task"].items()
        for name, value in metrics.items()
    }
    for key in ("glue_avg", "glue_avg_with_wnli"):
        if key in report:
            out[key] = report[key]
    return out


def build_evaluate(cfg: EvalConfig, checkpoint: Artifact, *, out: Path, job: Job) -> dict:
    """Score `checkpoint` on every task's dev set; writes report.json and predictions/.

    A several-seed fine-tune output is scored seed by seed: the report keeps every
    seed's numbers under ``per_seed`` and reports the per-metric MEDIAN as ``per_task``
    (which the GLUE averages are computed from), predictions under predictions/seed-<s>/.
    """
    specs = [get_task(name) for name in cfg.tasks]
    seeds = seed_sets(checkpoint.dir)
    if not seeds:
        scores = evaluate_model_set(cfg, checkpoint.dir, specs, job.sink)
        write_predictions(out / "predictions", scores.rows)
        report = build_report(scores.per_task, scores.dev_examples)
    else:
        per_seed = {}
        for seed, directory in seeds.items():
            scores = evaluate_model_set(cfg, directory, specs, job.sink)
            write_predictions(out / "predictions" / f"seed-{seed}", scores.rows)
            per_seed[seed] = scores.per_task
        report = build_report(median_metrics(per_seed), scores.dev_examples)
        report |= {"per_seed": {str(s): build_report(p, {}) for s, p in per_seed.items()}}
        report |= {"seeds": sorted(seeds), "median_seed": median_seed(checkpoint.dir)}
    report["suite"] = suite(cfg)
    (out / REPORT).write_text(json.dumps(report, indent=2))
    summary = flat_summary(report)
    job.sink.log_metrics(summary, step=0)
    return summary


evaluate_checkpoint = Stage("evaluate", build_evaluate, reads=dev_files, log_files=(REPORT, "predictions"))
