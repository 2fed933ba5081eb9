"""BERT family vs T5 family on an equal pre-training clock: GLUE and SQuAD, each against its own random init.

    python benchmarks/t5_vs_bert.py --data ../shared/data --out t5_vs_bert.json [--quick]
        [--seed 0,1,2] [--precision fp32]

Runs ``glue_bench.py`` twice, one family after the other (never side by side: pre-training is
budgeted by the clock, so a second job on the cores would shorten the first one's training),
with the same corpus, vocabulary size, pre-training minutes, fine-tuning steps and batch, tasks
and seeds. Each family's runs are ``pretrained`` and ``random_init`` (the same architecture from
a random initialisation, on the same fine-tuning budget). The T5 side uses glue_bench's
``--family t5`` (T5_BUDGET there: span corruption, text-to-text fine-tuning).

Output: each family's full glue_bench JSON next to ``--out`` (``<stem>.bert.json``,
``<stem>.t5.json``), and ``--out`` itself: per family, the pretrained and random-init glue_avg
(CoLA, SST-2, MRPC, STS-B, RTE) and SQuAD F1, medians over the seeds, the gains, the invalid
outputs T5 wrote (counted wrong), and the pre-training steps and final validation loss. A table
goes to stdout. glue_bench reuses finished stages under its workdir, so a stopped comparison
resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import now, provenance

FAMILIES = ("bert", "t5")
TASKS = ("CoLA", "SST-2", "MRPC", "STS-B", "RTE", "SQuAD")
RUNS = ("pretrained", "random_init")


def family_command(args: argparse.Namespace, family: str, out: Path) -> list[str]:
    """The glue_bench invocation of one family: everything but the family is shared."""
    workdir = Path(".bench") / f"t5-vs-bert{'-quick' if args.quick else ''}" / family
    cmd = [sys.executable, str(Path(__file__).with_name("glue_bench.py")), "--data", str(args.data)]
    cmd += ["--out", str(out), "--workdir", str(workdir), "--family", family, "--tasks", ",".join(TASKS)]
    cmd += ["--runs", ",".join(RUNS), "--seed", args.seed]
    if args.quick:
        cmd.append("--quick")
    if args.precision:
        cmd += ["--precision", args.precision]
    if args.pretrain_minutes is not None:
        cmd += ["--pretrain-minutes", str(args.pretrain_minutes)]
    return cmd


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """One family's figures: glue_avg and SQuAD F1 pretrained vs random init (medians), and gains."""
    out: dict[str, Any] = {}
    for run in RUNS:
        report = result[run]
        out[run] = {
            "glue_avg": report["glue_avg"],
            "glue_avg_name": report["glue_avg_name"],
            "squad_f1": report["per_task"]["SQuAD"]["f1"],
            "per_task": report["per_task"],
            "invalid_outputs": invalid_outputs(report),
            "seeds": report["seeds"],
        }
    out["gain"] = {
        key: round(out["pretrained"][key] - out["random_init"][key], 2) for key in ("glue_avg", "squad_f1")
    }
    curve = result.get("pretrain_validation_curve") or [{}]
    out["pretrain"] = {
        "steps": result["pretrain"].get("steps"),
        "minutes": result["budget"]["pretrain_minutes"],
        "last_validation": curve[-1],
    }
    return out


def invalid_outputs(report: dict[str, Any]) -> dict[str, float]:
    """Per task, the median count of decoded outputs that were no valid label (T5 only; BERT has none)."""
    tasks = report["per_task"].items()
    return {task: metrics["invalid_outputs"] for task, metrics in tasks if "invalid_outputs" in metrics}


def print_table(families: dict[str, dict[str, Any]]) -> None:
    header = [("glue_avg pre", 14), ("random", 10), ("gain", 8)]
    header += [("SQuAD F1 pre", 15), ("random", 10), ("gain", 8)]
    print(f"{'family':<8}" + "".join(f"{name:>{width}}" for name, width in header))
    for family, s in families.items():
        pre, rand, gain = s["pretrained"], s["random_init"], s["gain"]
        print(
            f"{family:<8}{pre['glue_avg']:>14.2f}{rand['glue_avg']:>10.2f}{gain['glue_avg']:>8.2f}"
            f"{pre['squad_f1']:>15.2f}{rand['squad_f1']:>10.2f}{gain['squad_f1']:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dir with corpus/, glue/ and squad/")
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="glue_bench --quick for both families")
    parser.add_argument("--seed", default="0,1,2", help="fine-tuning seeds, comma-separated")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="both families'")
    parser.add_argument("--pretrain-minutes", type=float, default=None, help="both families' clock")
    args = parser.parse_args()
    started = now()
    families: dict[str, dict[str, Any]] = {}
    outs = {family: args.out.with_name(f"{args.out.stem}.{family}.json") for family in FAMILIES}
    for family, out in outs.items():
        subprocess.run(family_command(args, family, out), check=True)
        families[family] = summary(json.loads(out.read_text()))
    print_table(families)
    setting = {"tasks": list(TASKS), "seeds": args.seed, "quick": args.quick, "precision": args.precision}
    payload = {
        "provenance": provenance(("torch", "tokenizers"), started),
        "setting": setting,
        "per_family_results": {family: out.name for family, out in outs.items()},
        **families,
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
