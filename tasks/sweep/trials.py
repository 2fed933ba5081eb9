"""What one trial of a sweep runs, and what the sweep runs after its last trial.

A trial is a pipeline run of the preset with the trial's values set, fine-tuned WITHOUT the
selection split and scored ON it (no registration, no random-init baseline: the objective
is the pre-trained model's selection score). The best trial's model is then scored once on
the dev sets by a normal pipeline run with the same values and the same held-out training
data, so its fine-tuning stage is the trial's own (reused, not retrained), and the usual
gate decides whether it becomes champion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tasks.run.config import PipelineConfig
from tasks.run.context import PruneLink
from tasks.store.digest import json_digest
from tasks.sweep.space import SearchSpace


def trial_updates(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
    held_out = space.selection.model_dump()
    return {
        **params, "finetune.hold_out": held_out, "evaluate.split": "selection",
        "evaluate.selection": held_out, "registry.enabled": False, "baseline_random_init": False,
    }  # fmt: skip


def prune_sign(space: SearchSpace) -> float:
    """Pre-training figures are losses; under a maximised objective they are reported negated,
    so Optuna's "better" (the study's direction) agrees with "lower loss"."""
    return -1.0 if space.direction == "maximize" else 1.0


def prune_link(space: SearchSpace, study_name: str, storage: str, number: int) -> PruneLink | None:
    """What trial ``number``'s pre-training reports to (None when the space does not prune)."""
    if space.pruning is None:
        return None
    return PruneLink(
        storage=storage, study_name=study_name, trial_number=number, metric=space.pruning.metric,
        sign=prune_sign(space),
        startup_trials=space.pruning.startup_trials, warmup_steps=space.pruning.warmup_steps,
    )  # fmt: skip


def final_updates(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
    return {**params, "finetune.hold_out": space.selection.model_dump()}


def study_name(preset: str, base: PipelineConfig, overrides: Sequence[str], space: SearchSpace) -> str:
    """The same preset config, overrides and space on the same storage continue one study."""
    digest = json_digest(
        {"base": base.model_dump(mode="json"), "overrides": list(overrides), "space": space.identity()}
    )
    return f"{preset}-{digest[:12]}"


def objective(summary: Mapping[str, Any], metric: str) -> float:
    """The trial's objective from its evaluation summary (a missing metric is an error, not a 0)."""
    value = summary.get(metric)
    if not isinstance(value, int | float):
        raise KeyError(f"sweep.metric {metric!r} is not in the trial's evaluation ({sorted(summary)})")
    return float(value)


def pretrain_flops(summary: Mapping[str, Any]) -> float:
    """6 · parameters · tokens: the usual estimate of the pre-training FLOPs a checkpoint cost."""
    return 6.0 * float(summary.get("num_parameters") or 0) * float(summary.get("tokens") or 0)
