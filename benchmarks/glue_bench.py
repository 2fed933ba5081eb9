"""Transfer benchmark: pre-train on a real corpus, then fine-tune + evaluate on GLUE and SQuAD.

    python benchmarks/glue_bench.py --data ../shared/data --out glue.json [--quick]

Runs the project's own pure stage functions in order, without Prefect or MLflow:
ingest (WikiExtractor files under DIR/corpus) -> dedup -> tokenizer -> pack -> pretrain,
then, on every GLUE task present under DIR/glue plus SQuAD v1.1 (DIR/squad), three
fine-tune + evaluate runs on the SAME fine-tuning budget:

* ``pretrained``: multi-task (examples-proportional mixing) from the pre-trained encoder;
* ``random_init``: the same, from a random initialisation of the same architecture
  (the transfer baseline: pre-training must beat it);
* ``single_task``: one model per task from the pre-trained encoder, each trained for its
  mixture share of the steps (FinetuneConfig mode="single"), i.e. the multi-task vs
  single-task comparison on equal compute.

SQuAD: DIR/squad/train.json + dev.json when present; otherwise the by-article split of
the official dev set (DIR/squad/split-by-article/{train,eval}.json): its scores are NOT
comparable with published SQuAD dev numbers.

Output JSON: ``{"budget": ..., "pretrained": report, "random_init": report,
"single_task": report, "seconds": ...}`` where a report has ``per_task`` metrics (0-100),
``glue_avg`` (without WNLI, named in ``glue_avg_name``), ``glue_avg_with_wnli`` and
``squad``; a table goes to stdout. Stages are content-addressed under --workdir, so a
re-run reuses finished stages.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.artifacts import Artifact
from tasks.dedup import DedupConfig, dedup
from tasks.downstream.tasks import TASKS
from tasks.engine.sink import NullSink
from tasks.evaluation import REPORT, EvalConfig, evaluate_checkpoint
from tasks.finetune import FinetuneConfig, finetune
from tasks.ingest import IngestConfig, ingest
from tasks.pack import PackConfig, pack
from tasks.pretrain import PretrainConfig, pretrain
from tasks.tokenizer import TokenizerConfig, train_tokenizer

log = logging.getLogger("glue_bench")


@dataclass(frozen=True)
class Budget:
    """Everything that sizes a run; --quick shrinks it to a few CPU minutes."""

    corpus_files: int | None  # WikiExtractor files read (None: all)
    max_docs: int | None
    vocab_size: int
    seq_len: int
    size: str
    pretrain_steps: int
    pretrain_minutes: float | None
    pretrain_batch: int
    finetune_steps: int
    finetune_batch: int
    max_train_examples: int | None
    max_eval_examples: int | None
    lr: float


QUICK = Budget(
    corpus_files=2,
    max_docs=1500,
    vocab_size=6000,
    seq_len=128,
    size="tiny",
    pretrain_steps=120,
    pretrain_minutes=None,
    pretrain_batch=16,
    finetune_steps=100,
    finetune_batch=16,
    max_train_examples=1000,
    max_eval_examples=100,
    lr=2e-4,
)
FULL = Budget(
    corpus_files=None,
    max_docs=None,
    vocab_size=16000,
    seq_len=128,
    size="mini",
    pretrain_steps=100_000,
    pretrain_minutes=120.0,
    pretrain_batch=64,
    finetune_steps=3000,
    finetune_batch=32,
    max_train_examples=None,
    max_eval_examples=None,
    lr=1e-4,
)


def downstream_dir(data: Path, workdir: Path) -> Path:
    """A downstream data dir in the project layout, made of symlinks into DIR."""
    if (data / "squad" / "train.json").is_file() or not (data / "squad" / "split-by-article").is_dir():
        return data
    view = workdir / "downstream"
    (view / "squad").mkdir(parents=True, exist_ok=True)
    links = {
        view / "glue": data / "glue",
        view / "squad" / "train.json": data / "squad" / "split-by-article" / "train.json",
        view / "squad" / "dev.json": data / "squad" / "split-by-article" / "eval.json",
    }
    for link, target in links.items():
        if not link.exists():
            os.symlink(target.resolve(), link)
    return view


def available_tasks(downstream: Path) -> tuple[str, ...]:
    """Registered tasks whose train and dev files are all present, in registry order."""
    names = []
    for spec in TASKS.values():
        base = downstream / ("glue" if spec.is_glue else "") / spec.dir_name
        if all((base / f).is_file() for f in (spec.train_file, *(s.file for s in spec.dev_splits))):
            names.append(spec.name)
    return tuple(names)


def corpus_paths(data: Path, budget: Budget) -> tuple[str, ...]:
    corpus = data / "corpus"
    files = sorted(corpus.rglob("wiki_*"))
    if not files:
        raise SystemExit(f"no WikiExtractor files (wiki_*) under {corpus}")
    return tuple(str(p) for p in files[: budget.corpus_files])


def pretrain_pipeline(data: Path, workdir: Path, budget: Budget, seconds: dict[str, float]) -> Artifact:
    """ingest -> dedup -> tokenizer -> pack -> pretrain with the project's stage functions."""
    sink = NullSink()

    def timed(name: str, fn: Callable[..., Artifact], *args: Any, **kwargs: Any) -> Artifact:
        start = time.perf_counter()
        out = fn(*args, workdir=workdir, sink=sink, **kwargs)
        seconds[name] = round(time.perf_counter() - start, 1)
        log.info("%s: %.1fs %s", name, seconds[name], {k: out.summary[k] for k in list(out.summary)[:6]})
        return out

    docs = timed(
        "ingest",
        ingest,
        IngestConfig(paths=corpus_paths(data, budget), format="wiki", max_docs=budget.max_docs),
    )
    unique = timed("dedup", dedup, DedupConfig(), docs)
    tokenizer = timed("tokenizer", train_tokenizer, TokenizerConfig(vocab_size=budget.vocab_size), unique)
    packed = timed("pack", pack, PackConfig(seq_len=budget.seq_len), unique, tokenizer)
    cfg = PretrainConfig(
        size=budget.size,
        max_steps=budget.pretrain_steps,
        max_minutes=budget.pretrain_minutes,
        batch_size=budget.pretrain_batch,
        eval_every=max(1, budget.pretrain_steps // 10),
    )
    return timed("pretrain", pretrain, cfg, packed, tokenizer)


def finetune_and_evaluate(
    checkpoint: Artifact,
    downstream: Path,
    tasks: tuple[str, ...],
    budget: Budget,
    workdir: Path,
    **options: Any,
) -> dict:
    """One fine-tune run (FinetuneConfig options in `options`) and its dev report."""
    cfg = FinetuneConfig(
        data_dir=str(downstream),
        tasks=tasks,
        batch_size=budget.finetune_batch,
        lr=budget.lr,
        max_steps=budget.finetune_steps,
        max_seq_len=budget.seq_len,
        max_train_examples_per_task=budget.max_train_examples,
        **options,
    )
    tuned = finetune(cfg, checkpoint, workdir=workdir, sink=NullSink())
    eval_cfg = EvalConfig(
        data_dir=str(downstream),
        tasks=tasks,
        max_seq_len=budget.seq_len,
        max_examples_per_task=budget.max_eval_examples,
    )
    report = evaluate_checkpoint(eval_cfg, tuned, workdir=workdir, sink=NullSink())
    return json.loads(report.file(REPORT).read_text())


def headline(metrics: dict[str, float]) -> str:
    return " / ".join(f"{v:.1f}" for v in metrics.values())


def print_table(results: dict[str, dict]) -> None:
    runs = list(results)
    tasks = list(next(iter(results.values()))["per_task"])
    print(f"{'task':<20}" + "".join(f"{r:>24}" for r in runs))
    for task in tasks:
        print(f"{task:<20}" + "".join(f"{headline(results[r]['per_task'][task]):>24}" for r in runs))
    for key in ("glue_avg", "glue_avg_with_wnli"):
        if key in results[runs[0]]:
            print(f"{key:<20}" + "".join(f"{results[r][key]:>24.2f}" for r in runs))
    print(f"({results[runs[0]].get('glue_avg_name', '')}; metrics as listed in the JSON, 0-100)")


def override(budget: Budget, args: argparse.Namespace) -> Budget:
    """The budget with any command-line overrides applied."""
    changes = {
        "size": args.size,
        "pretrain_minutes": args.pretrain_minutes,
        "finetune_steps": args.finetune_steps,
        "corpus_files": args.corpus_files,
    }
    return replace(budget, **{k: v for k, v in changes.items() if v is not None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dir with corpus/, glue/ and squad/")
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="a few CPU minutes on a tiny slice")
    parser.add_argument("--workdir", type=Path, default=None, help="stage dirs (default .bench/glue[-quick])")
    parser.add_argument("--size", default=None, help="override the model size (tiny, mini, small, ...)")
    parser.add_argument(
        "--pretrain-minutes", type=float, default=None, help="override the pre-training budget"
    )
    parser.add_argument("--finetune-steps", type=int, default=None, help="override the fine-tuning steps")
    parser.add_argument("--corpus-files", type=int, default=None, help="override the number of corpus files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    budget = override(QUICK if args.quick else FULL, args)
    workdir = (args.workdir or Path(".bench") / ("glue-quick" if args.quick else "glue")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started, seconds = time.perf_counter(), {}
    checkpoint = pretrain_pipeline(args.data.resolve(), workdir, budget, seconds)
    downstream = downstream_dir(args.data.resolve(), workdir)
    tasks = available_tasks(downstream)
    runs = {
        "pretrained": {},
        "random_init": {"init": "random"},
        "single_task": {"mode": "single"},
    }
    results = {}
    for name, options in runs.items():
        start = time.perf_counter()
        results[name] = finetune_and_evaluate(checkpoint, downstream, tasks, budget, workdir, **options)
        seconds[f"finetune+evaluate/{name}"] = round(time.perf_counter() - start, 1)
    seconds["total"] = round(time.perf_counter() - started, 1)
    print_table(results)
    payload = {
        "budget": asdict(budget) | {"quick": args.quick, "tasks": list(tasks)},
        "pretrain": checkpoint.summary,
        **results,
        "seconds": seconds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out} in {seconds['total']:.0f}s")


if __name__ == "__main__":
    main()
