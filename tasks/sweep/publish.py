"""A finished sweep's results: files in the workdir, the same on the MLflow parent run, and Prefect artifacts.

``<workdir>/sweep/<study>/`` gets ``trials.md`` (the table), ``sweep.json`` (every trial, the
pruned ones with the step they stopped at, the best one's values, its selection score and its
dev scores, scored once) and the two plots.
The directory is written beside and renamed into place, so a killed sweep never leaves a
half-written one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from registry.tracking import Tracker
from tasks.run.prefect_io import in_prefect_run, inline_pngs
from tasks.sweep.report import PrunedTrial, TrialOutcome, markdown, plot_budget, plot_parallel, table_rows
from tasks.sweep.session import SweepRun
from tasks.sweep.space import SearchSpace


@dataclass(frozen=True)
class Published:
    rows: list[dict[str, str]]
    markdown: str
    files: list[Path]


def write_files(
    space: SearchSpace, outcomes: Sequence[TrialOutcome], best: TrialOutcome, final: Any, out: Path,
    pruned: Sequence[PrunedTrial] = (),
) -> Published:  # fmt: skip
    rows = table_rows(space, outcomes, best.number, pruned)
    table = markdown(rows)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "trials.md").write_text(table + "\n")
    record = {
        "metric": space.metric, "direction": space.direction, "selection": space.selection.model_dump(),
        "trials": [asdict(o) for o in outcomes], "pruned_trials": [asdict(t) for t in pruned],
        "best_trial": best.number, "best_params": best.params,
        "best_selection_value": best.value,
        "best_dev_summary": final.summaries["pretrained"],
        "best_dev_run_id": final.parent_run_id,
        "registration": final.registration.summary if final.registration is not None else None,
    }  # fmt: skip
    (tmp / "sweep.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    plot_parallel(space, outcomes, tmp)
    plot_budget(space, outcomes, tmp)
    if out.exists():
        shutil.rmtree(out)  # the sweep's own output dir, from an earlier finish of the same study
    tmp.rename(out)
    return Published(rows, table, sorted(out.iterdir()))


def publish(
    space: SearchSpace, outcomes: Sequence[TrialOutcome], best: int, final: Any, run: SweepRun, out: Path,
    pruned: Sequence[PrunedTrial] = (),
) -> Published:  # fmt: skip
    best_outcome = next(o for o in outcomes if o.number == best)
    published = write_files(space, outcomes, best_outcome, final, out, pruned)
    tracker = Tracker(run.tracking_uri)
    tracker.log_files(run.run_id, published.files, artifact_path="sweep")
    dev = {f"best_dev/{k}": v for k, v in final.summaries["pretrained"].items()}
    tracker.log_metrics(run.run_id, {f"best_selection/{space.metric}": best_outcome.value, **dev}, step=0)
    for o in outcomes:
        tracker.log_metrics(run.run_id, {f"trial_selection/{space.metric}": o.value}, step=o.number)
    if in_prefect_run():
        create_table_artifact(
            published.rows,
            key="sweep-trials",
            description=f"Sweep trials, ranked on selection {space.metric}",
        )
        images = inline_pngs([p for p in published.files if p.suffix == ".png"])
        create_markdown_artifact(f"# Sweep\n\n{published.markdown}\n\n{images}", key="sweep-plots")
    return published
