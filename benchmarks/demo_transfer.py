"""Demo transfer benchmark: does a demo preset's pre-training beat random init, seed after seed?

    python benchmarks/demo_transfer.py --out benchmarks/results/demo_transfer.json \
        [--preset tiny|t5-tiny] [--seeds 0 1 2 3 4] [--set section.field=value ...] [--threads N] [--quick]

For every seed s the preset (``tiny`` by default; ``t5-tiny`` for the T5 family), plus the
``--set`` overrides, is run with
``demo.seed = pretrain.seed = s`` and ``finetune.seeds = [s]``, through the project's own
stage callables (no Prefect, no MLflow): synthetic demo data -> ingest -> dedup -> tokenizer
-> pack -> pretrain, then fine-tune + evaluate twice on the same budget, from the
pre-trained encoder and from random init (the demo's transfer baseline).

Recorded per seed: pre-training steps, stop reason and final validation MLM loss / accuracy;
every dev score (SST-2, MRPC, STS-B, SQuAD) pretrained vs random init; the SST-2 gap; and the
SST-2 accuracy split by the dev sentence's sentiment words (all held out, i.e. never in a
fine-tuning train set, vs at least one visible), which tells "transfer through pre-training"
apart from "learnt on the train set". Seconds are recorded too, but they are noisy on a
shared machine: the budget is steps.

Each seed runs in its own ``<workdir>/seed<s>`` so stages are content-addressed and cached per
seed: fine-tuning variants (``--set finetune....``) reuse that seed's pre-trained checkpoint.
The JSON is rewritten after every seed (``"partial": true`` until the last) and holds the
overrides, the command (no absolute paths), the date, the machine, torch's version and thread
count. ``--quick`` is a smoke run (pre-training 100 steps, fine-tuning 60 steps).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.provenance import now, provenance
from tasks.data.dedup import dedup
from tasks.data.ingest import ingest
from tasks.data.pack import pack
from tasks.data.tokenizer import train_tokenizer
from tasks.demo.stage import make_demo_data
from tasks.judge.evaluation import evaluate_checkpoint
from tasks.run.config import load_config
from tasks.train.finetune import finetune
from tasks.train.pretrain import pretrain

log = logging.getLogger("demo_transfer")

QUICK = ["pretrain.train.max_steps=100", "finetune.train.max_steps=60"]
SCORES = (
    ("SST-2", "accuracy"),
    ("MRPC", "accuracy"),
    ("MRPC", "f1"),
    ("STS-B", "pearson"),
    ("STS-B", "spearmanr"),
    ("SQuAD", "exact_match"),
    ("SQuAD", "f1"),
)


def sst2_by_word_split(report_dir: Path, data_dir: Path, lexicon_path: Path) -> dict[str, Any]:
    """SST-2 dev accuracy on sentences whose sentiment words are all held out vs the rest."""
    lexicon = json.loads(lexicon_path.read_text())["classes"]
    heldout = set(lexicon["positive"]["heldout"]) | set(lexicon["negative"]["heldout"])
    visible = set(lexicon["positive"]["visible"]) | set(lexicon["negative"]["visible"])
    with (data_dir / "glue" / "SST-2" / "dev.tsv").open(encoding="utf-8") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with (report_dir / "predictions" / "SST-2.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if len(rows) != len(sentences):
        return {}
    groups: dict[str, list[bool]] = {"heldout": [], "visible": []}
    for sentence, row in zip(sentences, rows, strict=True):
        words = set(sentence.split())
        if words & (heldout | visible):
            key = "visible" if words & visible else "heldout"
            groups[key].append(row["prediction"] == row["label"])
    return {
        f"SST-2/accuracy_{k}": round(100.0 * sum(v) / len(v), 2) if v else None for k, v in groups.items()
    } | {f"SST-2/n_{k}": len(v) for k, v in groups.items()}


def scores(summary: dict[str, Any]) -> dict[str, float | None]:
    out = {}
    for task, metric in SCORES:
        value = summary.get(f"{task}/{metric}")
        out[f"{task}/{metric}"] = None if value is None else round(float(value), 2)
    invalid = {k: v for k, v in summary.items() if k.endswith("/invalid_outputs")}  # T5: no valid label
    return out | invalid


def run_seed(seed: int, overrides: list[str], workdir: Path, preset: str = "tiny") -> dict[str, Any]:
    """One seed end to end; returns its record."""
    workdir.mkdir(parents=True, exist_ok=True)
    seed_overrides = [f"demo.seed={seed}", f"pretrain.seed={seed}", f"finetune.seeds=[{seed}]"]
    cfg = load_config(preset, workdir, [*overrides, *seed_overrides])
    record: dict[str, Any] = {"seed": seed}
    t0 = time.perf_counter()
    demo = make_demo_data(cfg.demo, workdir=workdir)
    docs = dedup(cfg.dedup, ingest(cfg.ingest, workdir=workdir), workdir=workdir)
    tok = train_tokenizer(cfg.tokenizer, docs, workdir=workdir)
    packed = pack(cfg.pack, docs, tok, workdir=workdir)
    t1 = time.perf_counter()
    ckpt = pretrain(cfg.pretrain, packed, tok, workdir=workdir)
    t2 = time.perf_counter()
    s = ckpt.summary
    record["pretrain"] = {
        "steps": s.get("steps"),
        "stop_reason": s.get("stop_reason"),
        "stopped_early": s.get("stopped_early"),
        "final_loss": s.get("final_loss"),
        "val_loss": s.get("val_loss"),
        "val_mlm_accuracy": s.get("val_mlm_accuracy"),
        "val_token_accuracy": s.get("val_token_accuracy"),  # T5 span corruption
        "train_seconds": s.get("seconds"),
        "seconds_per_step": round(s["seconds"] / s["steps"], 4)
        if s.get("seconds") and s.get("steps")
        else None,
    }
    runs = {}
    for name, ft_cfg in (
        ("pretrained", cfg.finetune),
        ("random_init", cfg.finetune.model_copy(update={"init": "random"})),
    ):
        ta = time.perf_counter()
        tuned = finetune(ft_cfg, ckpt, workdir=workdir)
        report = evaluate_checkpoint(cfg.evaluate, tuned, workdir=workdir)
        runs[name] = scores(report.summary) | sst2_by_word_split(
            report.dir, Path(cfg.finetune.data_dir), demo.dir / "lexicon.json"
        )
        runs[name]["finetune_steps"] = tuned.summary.get("steps")
        runs[name]["seconds"] = round(time.perf_counter() - ta, 1)
    record |= runs
    pre, rnd = runs["pretrained"]["SST-2/accuracy"], runs["random_init"]["SST-2/accuracy"]
    record["sst2_gap"] = None if pre is None or rnd is None else round(pre - rnd, 2)
    record["seconds"] = {
        "data": round(t1 - t0, 1),
        "pretrain_wall": round(t2 - t1, 1),
        "total": round(time.perf_counter() - t0, 1),
    }
    return record


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    gaps = [r["sst2_gap"] for r in records if r.get("sst2_gap") is not None]
    if not gaps:
        return {}
    return {
        "seeds": [r["seed"] for r in records],
        "sst2_gap_min": min(gaps),
        "sst2_gap_median": statistics.median(gaps),
        "sst2_gap_mean": round(statistics.fmean(gaps), 2),
        "sst2_pretrained": [r["pretrained"]["SST-2/accuracy"] for r in records],
        "sst2_random_init": [r["random_init"]["SST-2/accuracy"] for r in records],
        "all_gaps_at_least_15": all(g >= 15 for g in gaps),
    }


def table(records: list[dict[str, Any]]) -> str:
    head = (
        f"{'seed':>4} {'pt steps':>8} {'val acc':>7} | {'SST-2 pre':>9} {'rand':>6} {'gap':>6} | "
        f"{'held pre':>8} {'held rnd':>8} | {'MRPC pre':>8} {'rand':>6} | {'STS-B pre':>9} {'rand':>6}"
    )
    lines = [head]
    for r in records:
        p, q = r["pretrained"], r["random_init"]
        acc = r["pretrain"]["val_mlm_accuracy"] or r["pretrain"]["val_token_accuracy"]
        lines.append(
            f"{r['seed']:>4} {r['pretrain']['steps']:>8} {acc if acc is None else round(acc, 3):>7} | "
            f"{p['SST-2/accuracy']:>9} {q['SST-2/accuracy']:>6} {r['sst2_gap']:>6} | "
            f"{p.get('SST-2/accuracy_heldout')!s:>8} {q.get('SST-2/accuracy_heldout')!s:>8} | "
            f"{p['MRPC/accuracy']!s:>8} {q['MRPC/accuracy']!s:>6} | "
            f"{p['STS-B/pearson']!s:>9} {q['STS-B/pearson']!s:>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="result JSON (rewritten after every seed)")
    parser.add_argument("--preset", default="tiny", help="demo preset: tiny (BERT) or t5-tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="preset override, as bertflow run --set (repeatable)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 100 pre-training, 60 fine-tuning steps"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None,
        help="stage cache, one seed<s>/ per seed (default: a fresh temporary directory, deleted at the end)",
    )  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="log the stages' progress (INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    if args.verbose:
        logging.getLogger("tasks").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    started = now()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="demo-transfer-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
    records: list[dict[str, Any]] = []
    try:
        for seed in args.seeds:
            log.info("seed %d: %s", seed, " ".join(overrides) or "(preset as is)")
            records.append(run_seed(seed, overrides, workdir / f"seed{seed}", args.preset))
            r = records[-1]
            log.info(
                "seed %d: SST-2 %.1f pretrained vs %.1f random init (gap %.1f), %s pre-training steps",
                seed, r["pretrained"]["SST-2/accuracy"], r["random_init"]["SST-2/accuracy"], r["sst2_gap"],
                r["pretrain"]["steps"],
            )  # fmt: skip
            payload = {
                "benchmark": "demo_transfer",
                "preset": args.preset,
                "overrides": overrides,
                "quick": args.quick,
                "torch": {"version": torch.__version__, "num_threads": torch.get_num_threads()},
                "provenance": provenance(("torch", "tokenizers", "numpy"), started),
                "summary": aggregate(records),
                "per_seed": records,
                "partial": len(records) < len(args.seeds),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(payload, indent=2) + "\n")
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(table(records))
    print(json.dumps(aggregate(records), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
