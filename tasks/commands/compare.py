"""``bertflow compare``: a table of pipeline runs and two PNG plots, logged where people look.

The rows come from ``registry.compare`` (MLflow). The table is printed for the terminal
and written as markdown; the plots are the pre-training loss curves of the compared
runs and a grouped bar chart of per-task dev scores. All of it is logged to a
``compare`` MLflow run (tagged with the compared run ids) and, inside a Prefect run,
published as a markdown artifact (the table, the plots inline and, with an MLflow
server, a link to the comparison run).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
from prefect.artifacts import create_markdown_artifact

from registry.compare import RunRow, collect, loss_history
from registry.tracking import Tracker
from tasks.run.prefect_io import in_prefect_run, inline_pngs

log = logging.getLogger(__name__)

COLUMNS = (
    "run",
    "model",
    "preset",
    "glue_avg",
    "squad_em",
    "squad_f1",
    "steps",
    "tokens",
    "minutes",
    "params",
)


@dataclass(frozen=True)
class Comparison:
    rows: list[RunRow]
    table: list[dict[str, str]]
    markdown: str
    plots: list[Path]
    compare_run_id: str | None


def fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table_rows(rows: Sequence[RunRow]) -> list[dict[str, str]]:
    """One dict per run: the fixed columns, then every task metric any run has."""
    tasks = sorted({k for r in rows for k in r.task_scores})
    out = []
    for r in rows:
        seconds = r.budget.get("seconds")
        row = {
            "run": f"{r.name} ({r.run_id[:8]})",
            "model": r.model,
            "preset": r.lineage.get("preset", ""),
            "glue_avg": fmt(r.glue_avg),
            "squad_em": fmt(r.squad_em),
            "squad_f1": fmt(r.squad_f1),
            "steps": fmt(r.budget.get("steps"), 0),
            "tokens": fmt(r.budget.get("tokens"), 0),
            "minutes": fmt(seconds / 60 if seconds is not None else None),
            "params": fmt(r.budget.get("num_parameters"), 0),
        }
        row.update({t: fmt(r.task_scores.get(t)) for t in tasks})
        out.append(row)
    return out


def terminal_table(table: Sequence[dict[str, str]]) -> str:
    cols = list(table[0])
    widths = [max(len(c), *(len(r[c]) for r in table)) for c in cols]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    body = ["  ".join(r[c].ljust(w) for c, w in zip(cols, widths, strict=True)) for r in table]
    return "\n".join([line, "-" * len(line), *body])


def markdown_table(table: Sequence[dict[str, str]]) -> str:
    cols = list(table[0])
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)
    return "\n".join([head, *("| " + " | ".join(r[c] for c in cols) + " |" for r in table)]) + "\n"


def plot_losses(tracker: Tracker, rows: Sequence[RunRow], out: Path) -> Path:
    """Pre-training loss (solid) and validation loss (dashed) against step, one colour per run.

    A run whose pre-training was reused from cache shows its producer's curve (same weights).
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(rows):
        if r.pretrain_run_id is None:
            continue
        for key, style in (("loss", "-"), ("val_loss", "--")):
            points = loss_history(tracker, r.pretrain_run_id, key)
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, style, color=f"C{i}", label=f"{r.run_id[:8]} {key}")
    ax.set(xlabel="step", ylabel="MLM loss", title="Pre-training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_task_scores(rows: Sequence[RunRow], out: Path) -> Path:
    """Grouped bars: per-task dev score (0-100) per run, plus the GLUE average."""
    tasks = [*sorted({k for r in rows for k in r.task_scores}), "glue_avg"]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(tasks) * max(1, len(rows))), 4))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        values = [r.task_scores.get(t, 0.0) if t != "glue_avg" else (r.glue_avg or 0.0) for t in tasks]
        ax.bar([x + i * width for x in range(len(tasks))], values, width, label=f"{r.name} {r.run_id[:8]}")
    ax.set_xticks(
        [x + width * (len(rows) - 1) / 2 for x in range(len(tasks))], tasks, rotation=30, ha="right"
    )
    ax.set(ylabel="dev score (0-100)", title="Per-task dev scores")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def log_comparison(tracker: Tracker, rows: Sequence[RunRow], files: Sequence[Path]) -> str:
    """A ``compare`` run in the first run's experiment holding the table and plots."""
    run_id = tracker.start_run(
        rows[0].experiment_id, "compare", tags={"bertflow.compared_runs": ",".join(r.run_id for r in rows)}
    )
    try:
        tracker.log_files(run_id, files, artifact_path="compare")
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id, "FINISHED")
    return run_id


def publish_prefect(
    tracker: Tracker, markdown: str, rows: Sequence[RunRow], plots: Sequence[Path], run_id: str
) -> None:
    """A Prefect markdown artifact: the table, the PNGs inline (data URIs) and the MLflow link."""
    images = inline_pngs(plots)
    link = ""
    if tracker.tracking_uri.startswith(("http://", "https://")):
        url = f"{tracker.tracking_uri.rstrip('/')}/#/experiments/{rows[0].experiment_id}/runs/{run_id}"
        link = f"\n\nTable and plots in MLflow: [run {run_id[:8]}]({url})\n"
    create_markdown_artifact(f"# Model comparison\n\n{markdown}\n{images}{link}", key="model-comparison")


def compare(
    tracking_uri: str,
    out_dir: Path,
    *,
    run_ids: list[str] | None = None,
    model: str | None = None,
    experiment: str = "bertflow",
    limit: int = 10,
    log_to_mlflow: bool = True,
) -> Comparison:
    """Collect the rows, write table + plots under ``out_dir``, log them to MLflow (and Prefect)."""
    tracker = Tracker(tracking_uri)
    tracker.check_reachable()
    rows = collect(tracker, run_ids=run_ids, model=model, experiment=experiment, limit=limit)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = table_rows(rows)
    markdown = markdown_table(table)
    (out_dir / "comparison.md").write_text(markdown)
    plots = [
        plot_losses(tracker, rows, out_dir / "loss_curves.png"),
        plot_task_scores(rows, out_dir / "task_scores.png"),
    ]
    run_id = log_comparison(tracker, rows, [out_dir / "comparison.md", *plots]) if log_to_mlflow else None
    if run_id and in_prefect_run():
        publish_prefect(tracker, markdown, rows, plots, run_id)
    return Comparison(rows, table, markdown, plots, run_id)
