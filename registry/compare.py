"""Compare pipeline runs / registered models: one row each, read back from MLflow.

A row is a pipeline parent run: its GLUE average and per-task dev scores (logged on the
parent as ``pretrained/<task>/<metric>`` by the pipeline), SQuAD EM/F1, the pre-training
budget (steps, tokens, seconds, parameters of its ``pretrain`` child run), and lineage
(preset, pre-training fingerprint, registered model version and aliases). Runs are
chosen by id, by registered model (every version, or ``name@alias``), or as the latest
N finished pipeline runs of an experiment.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from registry.model_registry import alias_version, is_not_found
from registry.tracking import Tracker

log = logging.getLogger(__name__)

LABEL = "pretrained"  # the fine-tuning init whose scores are compared (not the random-init baseline)
BUDGET_KEYS = ("steps", "tokens", "seconds", "num_parameters")
# Logged per task but not a dev score on the 0-100 scale: NER's per-type breakdown and counts
# (``WikiANN-en/PER_f1``, ``.../LOC_support``, ``.../repaired_tags``) stay out of the table and plots.
NOT_TASK_SCORES = re.compile(r"/([A-Z][A-Za-z0-9]*_(precision|recall|f1|support)|repaired_tags)$")


class CompareError(ValueError):
    """Nothing to compare, or a run / model that does not exist."""


@dataclass(frozen=True)
class RunRow:
    run_id: str
    name: str
    experiment_id: str
    glue_avg: float | None
    squad_em: float | None
    squad_f1: float | None
    task_scores: dict[str, float]  # "SST-2/accuracy" -> score
    budget: dict[str, float]
    lineage: dict[str, str]
    pretrain_run_id: str | None = None
    model: str = ""  # "name v3 @champion"
    extra: dict[str, str] = field(default_factory=dict)


def child_runs(tracker: Tracker, parent: Run) -> dict[str, Run]:
    runs = tracker.client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return {r.info.run_name: r for r in runs}


def model_label(tracker: Tracker, register_run: Run | None) -> str:
    """'name vN @alias…' of the version registered from ``register_run`` ('' when none)."""
    if register_run is None:
        return ""
    versions = tracker.client.search_model_versions(f"run_id = '{register_run.info.run_id}'")
    if not versions:
        return ""
    found = versions[0]  # search results carry no aliases: read the version itself
    mv = tracker.client.get_model_version(found.name, found.version)
    aliases = "".join(f" @{a}" for a in sorted(mv.aliases))
    return f"{mv.name} v{mv.version}{aliases}"


def run_row(tracker: Tracker, parent: Run) -> RunRow:
    """The comparison row of one pipeline parent run."""
    metrics = parent.data.metrics
    prefix = f"{LABEL}/"
    scores = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
    tasks = {
        k: v
        for k, v in scores.items()
        if "/" in k and not k.startswith("SQuAD") and not NOT_TASK_SCORES.search(k)
    }
    children = child_runs(tracker, parent)
    pretrain = children.get("pretrain")
    budget = {k: pretrain.data.metrics[k] for k in BUDGET_KEYS if pretrain and k in pretrain.data.metrics}
    lineage = {
        "preset": parent.data.tags.get("bertflow.preset", ""),
        "pretrain_fp": pretrain.data.tags.get("bertflow.fingerprint", "")[:12] if pretrain else "",
        "pretrain_size": pretrain.data.params.get("size", "") if pretrain else "",
        "objective": pretrain.data.params.get("objective", "") if pretrain else "",
    }
    return RunRow(
        run_id=parent.info.run_id,
        name=parent.info.run_name,
        experiment_id=parent.info.experiment_id,
        glue_avg=scores.get("glue_avg"),
        squad_em=scores.get("SQuAD/exact_match", scores.get("SQuAD/em")),
        squad_f1=scores.get("SQuAD/f1"),
        task_scores=tasks,
        budget=budget,
        lineage=lineage,
        pretrain_run_id=producer_run_id(pretrain) if pretrain else None,
        model=model_label(tracker, children.get("register")),
    )


def producer_run_id(run: Run) -> str:
    """The run that really trained: a reused (cached) stage's run points at its producer's."""
    return run.data.tags.get("bertflow.producer_run_id") or run.info.run_id


def parent_of(tracker: Tracker, run_id: str) -> Run:
    """The pipeline parent run of ``run_id`` (itself when it has no parent)."""
    try:
        run = tracker.client.get_run(run_id)
    except MlflowException as err:
        if not is_not_found(err):
            raise
        raise CompareError(f"run {run_id!r} not found at {tracker.tracking_uri}") from err
    parent_id = run.data.tags.get("mlflow.parentRunId")
    return tracker.client.get_run(parent_id) if parent_id else run


def model_runs(tracker: Tracker, model: str) -> list[Run]:
    """Parent runs of a registered model's versions (``name`` for all, ``name@alias`` for one)."""
    name, _, alias = model.partition("@")
    if alias:
        number = alias_version(tracker, name, alias)
        if number is None:
            raise CompareError(f"no version of {name!r} holds alias {alias!r} at {tracker.tracking_uri}")
        versions = [tracker.client.get_model_version(name, number)]
    else:
        versions = tracker.client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise CompareError(f"registered model {model!r} has no versions at {tracker.tracking_uri}")
    ordered = sorted(versions, key=lambda mv: int(mv.version))
    return [parent_of(tracker, mv.run_id) for mv in ordered]


def latest_runs(tracker: Tracker, experiment: str, limit: int) -> list[Run]:
    """The ``limit`` most recent finished pipeline parent runs of ``experiment``, oldest first."""
    found = tracker.client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(f"experiment {experiment!r} not found at {tracker.tracking_uri}")
    runs = tracker.client.search_runs(
        [found.experiment_id],
        filter_string="tags.`bertflow.preset` != '' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return list(reversed(runs))


def collect(
    tracker: Tracker,
    *,
    run_ids: list[str] | None = None,
    model: str | None = None,
    experiment: str = "bertflow",
    limit: int = 10,
) -> list[RunRow]:
    """Rows for the chosen runs: explicit ids, a registered model, or the latest of an experiment."""
    if run_ids:
        parents = [parent_of(tracker, r) for r in run_ids]
    elif model:
        parents = model_runs(tracker, model)
    else:
        parents = latest_runs(tracker, experiment, limit)
    unique = list({p.info.run_id: p for p in parents}.values())
    if not unique:
        raise CompareError("no pipeline runs to compare")
    return [run_row(tracker, p) for p in unique]


def loss_history(tracker: Tracker, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) of a metric's history, in step order."""
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, key))
