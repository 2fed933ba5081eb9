"""The GLUE average: inside each task first, then across tasks, named by the tasks it covers.

Kept apart from the `evaluate.Metric` modules: importing `evaluate` pulls in transformers'
pipelines (about 3 s), which reports, the register stage and the CLI do not need.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tasks.downstream.tasks import TASKS, get_task


def _included_tasks(per_task: Mapping[str, Mapping[str, float]], include_wnli: bool) -> list[str]:
    """GLUE tasks present in `per_task`, in registry order (non-GLUE entries such as SQuAD are ignored)."""
    names = [n for n, spec in TASKS.items() if spec.is_glue and n in per_task]
    return [n for n in names if include_wnli or n != "WNLI"]


def _task_score(name: str, metrics: Mapping[str, float]) -> float:
    """Mean of a task's own numbers (MRPC acc+F1, STS-B Pearson+Spearman, MNLI m+mm, ...)."""
    keys = get_task(name).metric_keys(metrics)
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(f"glue_average: {name} lacks {missing} (has {sorted(metrics)})")
    return float(np.mean([metrics[k] for k in keys]))


def glue_average(per_task: Mapping[str, Mapping[str, float]], include_wnli: bool) -> float:
    """GLUE score: average inside each task first, then across the tasks present (0-100 scale).

    Averaging inside a task first keeps two-number tasks (MRPC, QQP, STS-B, MNLI m/mm)
    from weighing double, as on the official leaderboard. WNLI is left out unless
    `include_wnli`, because its dev set is adversarial and most models score below the
    majority baseline; `glue_average_name` says which tasks went in.
    """
    names = _included_tasks(per_task, include_wnli)
    if not names:
        raise ValueError(f"glue_average: no GLUE task among {sorted(per_task)}")
    return float(np.mean([_task_score(n, per_task[n]) for n in names]))


def glue_average_name(per_task: Mapping[str, Mapping[str, float]], include_wnli: bool) -> str:
    """Label naming the tasks behind a `glue_average`, e.g. ``glue_avg[CoLA,MRPC,SST-2,STS-B]``."""
    return f"glue_avg[{','.join(sorted(_included_tasks(per_task, include_wnli)))}]"
