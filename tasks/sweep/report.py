"""What a finished sweep shows: a table of its trials and two plots (PNG).

- parallel coordinates: one line per trial across the dimensions (each scaled to its own
  range, log dimensions on a log scale), coloured by the objective;
- objective vs pre-training compute (6 · parameters · tokens, the usual estimate of training
  FLOPs): what each trial's score cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tasks.sweep.space import SearchSpace


@dataclass(frozen=True)
class TrialOutcome:
    """One finished trial: its dimensions, objective (selection split) and pre-training compute."""

    number: int
    params: dict[str, Any]
    value: float
    pretrain_flops: float
    run_id: str


@dataclass(frozen=True)
class PrunedTrial:
    """A trial stopped during pre-training: where, and the figure it was stopped on."""

    number: int
    params: dict[str, Any]
    step: int
    metric: str
    value: float


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table_rows(
    space: SearchSpace, outcomes: Sequence[TrialOutcome], best: int, pruned: Sequence[PrunedTrial] = ()
) -> list[dict[str, str]]:
    """One row per trial, best first marked with ``*``, pruned ones last; values as the space wrote them."""
    rows = []
    reverse = space.direction == "maximize"
    for o in sorted(outcomes, key=lambda o: o.value, reverse=reverse):
        row = {"trial": f"{o.number}{'*' if o.number == best else ''}"}
        row |= {p.path: _shown(o.params[p.path]) for p in space.params}
        row[f"selection {space.metric}"] = f"{o.value:.2f}"
        row["pretrain FLOPs"] = f"{o.pretrain_flops:.3g}"
        rows.append(row)
    for t in sorted(pruned, key=lambda t: t.number):
        row = {"trial": str(t.number), **{p.path: _shown(t.params[p.path]) for p in space.params}}
        row[f"selection {space.metric}"] = f"pruned at step {t.step} ({t.metric} {t.value:.3f})"
        row["pretrain FLOPs"] = "-"
        rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, str]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows])


def _scaled(space: SearchSpace, outcomes: Sequence[TrialOutcome]) -> list[list[float]]:
    """Each trial's position on every axis, in [0, 1]."""
    columns = []
    for p in space.params:
        raw = [o.params[p.path] for o in outcomes]
        if p.is_range or all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
            spread = min(raw) > 0 and max(raw) >= 10 * min(raw)  # decades apart: a log axis
            values = [math.log(v) if p.log or spread else float(v) for v in raw]
            lo, hi = min(values), max(values)
            columns.append([(v - lo) / (hi - lo) if hi > lo else 0.5 for v in values])
        else:
            order = [repr(v) for v in p.values]
            columns.append([order.index(repr(v)) / max(1, len(order) - 1) for v in raw])
    return [list(row) for row in zip(*columns, strict=True)]


def plot_parallel(space: SearchSpace, outcomes: Sequence[TrialOutcome], out: Path) -> Path:
    values = [o.value for o in outcomes]
    lo, hi = min(values), max(values)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(2.2 * (len(space.params) + 1) + 2, 4.5))
    axes = [*(p.path for p in space.params), f"selection {space.metric}"]
    for row, o in zip(_scaled(space, outcomes), outcomes, strict=True):
        shade = (o.value - lo) / (hi - lo) if hi > lo else 0.5
        ax.plot(range(len(axes)), [*row, shade], color=cmap(shade), marker="o", alpha=0.8)
    ax.set_xticks(range(len(axes)), axes, rotation=15)
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set_title(f"Sweep trials (colour: selection {space.metric}, {lo:.2f} to {hi:.2f})")
    fig.tight_layout()
    path = out / "parallel_coordinates.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_budget(space: SearchSpace, outcomes: Sequence[TrialOutcome], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([o.pretrain_flops for o in outcomes], [o.value for o in outcomes])
    for o in outcomes:
        ax.annotate(str(o.number), (o.pretrain_flops, o.value), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("pre-training compute (6 · parameters · tokens, FLOPs)")
    ax.set_ylabel(f"selection {space.metric}")
    ax.set_title("Objective vs pre-training budget")
    fig.tight_layout()
    path = out / "metric_vs_budget.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
