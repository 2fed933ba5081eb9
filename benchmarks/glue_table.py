"""Markdown tables for BENCHMARKS.md from one or more `glue_bench.py` JSON files.

    python benchmarks/glue_table.py RESULT.json [MORE.json ...]

Each file holds one or more fine-tuning seeds of the same pre-trained checkpoint (``--seed``). A run
(pretrained, random_init, single_task) present in several files is reported as the per-metric
median over those seeds, with the seed count in the header; small GLUE tasks vary a lot between
seeds, so one seed alone is labelled as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RUN_ORDER = ("pretrained", "random_init", "single_task")
LABELS = {
    "pretrained": "pretrained, multi-task",
    "random_init": "random init, multi-task",
    "single_task": "pretrained, single-task",
}


def collect(paths: list[Path]) -> dict[str, list[dict]]:
    """run name -> the reports of that run, one per file that has it."""
    runs: dict[str, list[dict]] = {}
    for path in paths:
        payload = json.loads(path.read_text())
        for name in RUN_ORDER:
            if name in payload:  # a multi-seed file holds each seed's report under per_seed
                reports = payload[name].get("per_seed", {"": payload[name]}).values()
                runs.setdefault(name, []).extend(reports)
    if not runs:
        raise SystemExit(f"no glue_bench runs in {[str(p) for p in paths]}")
    return runs


def median_report(reports: list[dict]) -> dict:
    """Per-task, per-metric medians and the median GLUE averages over seeds."""
    first = reports[0]
    per_task = {
        task: {metric: statistics.median(r["per_task"][task][metric] for r in reports) for metric in metrics}
        for task, metrics in first["per_task"].items()
    }
    averages = {
        key: statistics.median(r[key] for r in reports)
        for key in ("glue_avg", "glue_avg_with_wnli")
        if key in first
    }
    return {"per_task": per_task, **averages, "glue_avg_name": first.get("glue_avg_name", "glue_avg")}


def cell(metrics: dict[str, float]) -> str:
    return " / ".join(f"{value:.1f}" for value in metrics.values())


def table(runs: dict[str, list[dict]]) -> str:
    names = [n for n in RUN_ORDER if n in runs]
    medians = {n: median_report(runs[n]) for n in names}
    header = ["dev metric"] + [f"{LABELS[n]} ({len(runs[n])} seed{'s' * (len(runs[n]) > 1)})" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(names) + "|"]
    for task, metrics in medians[names[0]]["per_task"].items():
        label = f"{task} {' / '.join(metrics)}"
        lines.append(f"| {label} | " + " | ".join(cell(medians[n]["per_task"][task]) for n in names) + " |")
    for key in ("glue_avg", "glue_avg_with_wnli"):
        if key in medians[names[0]]:
            title = medians[names[0]]["glue_avg_name"] if key == "glue_avg" else key
            lines.append(f"| **{title}** | " + " | ".join(f"**{medians[n][key]:.1f}**" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="glue_bench.py JSON files")
    args = parser.parse_args()
    print(table(collect(args.results)))


if __name__ == "__main__":
    main()
