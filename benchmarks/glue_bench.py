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

The full budget is a CPU recipe for 2 cores: the first 300 Wikipedia files, an 8,192-token
WordPiece vocabulary, the ``mini`` encoder (4 x 256) with pre-LN and no dropout, 25 % masking
scored on the masked positions only, packed 128-token rows, bf16 autocast (CPUs with
AVX512-BF16 or AMX; pass ``--precision fp32`` elsewhere), AdamW at 1e-3 with the schedule
fitted to 50 minutes. Fine-tuning: 3,500 steps of 32 examples per run, about three passes
over the mixture with examples-proportional mixing capped at K = 8,192 (run_glue's three
epochs for the small tasks). ``--seed 0,1,2`` repeats every run per fine-tuning seed and
reports per-metric medians; ``--runs`` picks a subset (finished stages are reused). ``--set
FIELD=VALUE`` changes any other field of the budget (a recipe study's knobs: objective, masking
rate, sequence length, vocabulary, positions, warm-up, schedule).

``--family t5`` runs the same comparison for the T5 family (T5_BUDGET): the T5 v1.1
encoder-decoder of the same size name, a SentencePiece-style BPE vocabulary with T5's
specials, span corruption (noise density 0.15, mean span 3; rows of 141 tokens corrupt to
the 128 encoder positions), AdamW with Adafactor's relative steps at 2e-2 (lr_scaling "rms"),
and text-to-text fine-tuning at 1e-3 on the same tasks, steps and batch, scored by the same
metric modules (an output that is no valid label counts as wrong; each task's report counts
them). Everything else (corpus, vocabulary size, clock, seeds) is the budget's.

SQuAD: DIR/squad/train.json + dev.json when present; otherwise the by-article split of
the official dev set (DIR/squad/split-by-article/{train,eval}.json): its scores are NOT
comparable with published SQuAD dev numbers.

Output JSON: ``{"budget": ..., "pretrained": report, "random_init": report,
"single_task": report, "seconds": ...}`` where a report has ``per_task`` metrics (0-100),
``glue_avg`` (without WNLI, named in ``glue_avg_name``) and ``glue_avg_with_wnli``, each the
median over the ``seeds`` listed, with every seed's full report under ``per_seed``;
``pretrain_validation_curve`` holds the val_* figures logged while pre-training ran in this
invocation; the file is rewritten after every run (``"partial": true`` until the
last). A table goes to stdout. Stages are content-addressed under --workdir, so a
re-run reuses finished stages.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from benchmarks.glue_table import median_report
from benchmarks.provenance import now, portable_path, provenance
from tasks.data.dedup import DedupConfig, dedup
from tasks.data.ingest import IngestConfig, ingest
from tasks.data.pack import PackConfig, pack
from tasks.data.specials import T5
from tasks.data.tokenizer import TokenizerConfig, train_tokenizer
from tasks.downstream.selection import SelectionSplit
from tasks.downstream.tasks import TASKS
from tasks.engine.launch import JsonlSink
from tasks.engine.settings import TrainSettings
from tasks.engine.span_corruption import SpanCorruption
from tasks.judge.evaluation import REPORT, EvalConfig, evaluate_checkpoint
from tasks.sink import MetricSink, NullSink
from tasks.store.artifact import Artifact
from tasks.train.finetune import finetune
from tasks.train.finetune_config import FinetuneConfig
from tasks.train.pretrain import pretrain
from tasks.train.pretrain_config import PretrainConfig
from tasks.train.shape import EncoderShape, T5Shape

log = logging.getLogger("glue_bench")
RUNS: dict[str, dict[str, Any]] = {  # name -> FinetuneConfig options; same fine-tuning budget for all
    "pretrained": {},
    "random_init": {"init": "random"},
    "single_task": {"mode": "single"},
}
CURVE = "pretrain_metrics.jsonl"  # per-step pre-training metrics of this invocation


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
    pretrain_lr: float
    norm: str  # "pre" LayerNorm trains stably at the high LR a short budget needs
    dropout: float  # 0: one pass over fresh data does not overfit, and dropout slows learning
    mask_rate: float
    finetune_steps: int
    finetune_batch: int
    mixing_cap_k: int  # examples-proportional mixing: a task counts min(n, K) examples
    max_train_examples: int | None
    max_eval_examples: int | None
    lr: float
    pooling: str  # sentence-level heads: "cls" (BERT) or "mean"
    precision: str  # "bf16" autocast for pre-training and fine-tuning, or "fp32"
    group_by_length: bool = False  # fine-tuning batches of similar lengths (less padding)
    selection_size: int | None = None  # hold out N train examples per task, scored apart from dev
    pretrain_warmup: float = 0.06  # share of the pre-training budget spent warming up
    pretrain_schedule: str = "linear"  # decay to zero after warmup: "linear" or "cosine"
    objective: str = "mlm"  # pre-training objective: "mlm", "span" or "electra" (T5: "span_corruption")
    positions: str = "learned"  # encoder positions: "learned" (BERT), "sinusoidal" or "rotary"
    family: str = "bert"  # "t5": encoder-decoder, span corruption at noise density mask_rate, text to text
    tokenizer: str = "wordpiece"  # subword algorithm (T5: "bpe" or "unigram", SentencePiece-style)
    pretrain_lr_scaling: str = "none"  # "rms": Adafactor's relative steps (T5 needs it with AdamW)


T5_BUDGET = {  # --family t5: what differs from the BERT budget (the t5-small preset's recipe)
    "family": "t5",
    "objective": "span_corruption",
    "tokenizer": "bpe",  # byte-identical when rebuilt; Unigram is not (BENCHMARKS.md "T5 tokenizer")
    "mask_rate": 0.15,  # T5's noise density (mean span 3)
    "pretrain_lr": 2e-2,
    "pretrain_lr_scaling": "rms",
    "lr": 1e-3,
}


QUICK = Budget(
    corpus_files=2,
    max_docs=1500,
    vocab_size=6000,
    seq_len=128,
    size="tiny",
    pretrain_steps=120,
    pretrain_minutes=None,
    pretrain_batch=16,
    pretrain_lr=2e-3,
    norm="pre",
    dropout=0.0,
    mask_rate=0.25,
    finetune_steps=100,
    finetune_batch=16,
    mixing_cap_k=16384,
    max_train_examples=1000,
    max_eval_examples=100,
    lr=2e-4,
    pooling="mean",
    precision="fp32",
)
FULL = Budget(
    corpus_files=300,
    max_docs=None,
    vocab_size=8192,
    seq_len=128,
    size="mini",
    pretrain_steps=100_000,
    pretrain_minutes=50.0,
    pretrain_batch=64,
    pretrain_lr=1e-3,
    norm="pre",
    dropout=0.0,
    mask_rate=0.25,
    finetune_steps=3500,
    finetune_batch=32,
    mixing_cap_k=8192,
    max_train_examples=None,
    max_eval_examples=None,
    lr=1e-4,
    pooling="mean",
    precision="bf16",
)


def downstream_dir(data: Path, workdir: Path) -> Path:
    """A downstream data dir in the project layout, made of symlinks into DIR."""
    if (data / "squad" / "train.json").is_file() or not (data / "squad" / "split-by-article").is_dir():
        return data
    view = workdir / "downstream"
    (view / "squad").mkdir(parents=True, exist_ok=True)
    links = {
        view / "glue": data / "glue",
        view / "ner": data / "ner",
        view / "squad" / "train.json": data / "squad" / "split-by-article" / "train.json",
        view / "squad" / "dev.json": data / "squad" / "split-by-article" / "eval.json",
    }
    for link, target in links.items():
        if not link.exists() and target.exists():
            os.symlink(target.resolve(), link)
    return view


def available_tasks(downstream: Path) -> tuple[str, ...]:
    """Registered tasks whose train and dev files are all present, in registry order."""
    names = []
    for spec in TASKS.values():
        base = downstream / ("glue" if spec.is_glue else "") / spec.dir_name  # ner/<task> for NER
        if all((base / f).is_file() for f in (spec.train_file, *(s.file for s in spec.dev_splits))):
            names.append(spec.name)
    return tuple(names)


def wiki_files(data: Path) -> list[Path]:
    """The WikiExtractor files under DIR/corpus, sorted (the order every corpus budget counts in)."""
    corpus = data / "corpus"
    files = sorted(corpus.rglob("wiki_*"))
    if not files:
        raise SystemExit(f"no WikiExtractor files (wiki_*) under {corpus}")
    return files


def corpus_paths(data: Path, budget: Budget) -> tuple[str, ...]:
    return tuple(str(p) for p in wiki_files(data)[: budget.corpus_files])


def pretrain_pipeline(data: Path, workdir: Path, budget: Budget, seconds: dict[str, float]) -> Artifact:
    """ingest -> dedup -> tokenizer -> pack -> pretrain with the project's stage functions."""

    def timed(
        name: str, fn: Callable[..., Artifact], *args: Any, sink: MetricSink | None = None, **kwargs: Any
    ) -> Artifact:
        start = time.perf_counter()
        out = fn(*args, workdir=workdir, sink=sink or NullSink(), **kwargs)
        seconds[name] = round(time.perf_counter() - start, 1)
        log.info("%s: %.1fs %s", name, seconds[name], {k: out.summary[k] for k in list(out.summary)[:6]})
        return out

    docs = timed(
        "ingest",
        ingest,
        IngestConfig(paths=corpus_paths(data, budget), format="wiki", max_docs=budget.max_docs),
    )
    unique = timed("dedup", dedup, DedupConfig(), docs)
    words = TokenizerConfig(family=budget.family, algorithm=budget.tokenizer, vocab_size=budget.vocab_size)
    tokenizer = timed("tokenizer", train_tokenizer, words, unique)
    packed = timed("pack", pack, PackConfig(seq_len=packed_length(budget)), unique, tokenizer)
    cfg = pretrain_config(budget)
    curve = workdir / CURVE
    curve.unlink(missing_ok=True)
    return timed("pretrain", pretrain, cfg, packed, tokenizer, sink=JsonlSink(curve))


def pretrain_config(budget: Budget) -> PretrainConfig:
    """The pre-training stage's config for the budget (either family)."""
    return PretrainConfig(
        family=budget.family,
        **model_shape(budget),
        train=TrainSettings(
            max_steps=budget.pretrain_steps,
            max_minutes=budget.pretrain_minutes,  # the LR follows the clock down to 0 at the deadline
            lr=budget.pretrain_lr,
            warmup_ratio=budget.pretrain_warmup,
            schedule=budget.pretrain_schedule,
            eval_every=max(1, min(500, budget.pretrain_steps // 10)),
            checkpoint_every=200,
            precision=budget.precision,
            lr_scaling=budget.pretrain_lr_scaling,
        ),
        batch_size=budget.pretrain_batch,
        objective=budget.objective,
        **{"noise_density" if budget.family == "t5" else "mask_rate": budget.mask_rate},
    )


def packed_length(budget: Budget) -> int:
    """Corpus tokens per packed row: ``seq_len`` for BERT; for T5 the raw row whose span-corrupted
    input fills ``seq_len`` encoder positions (141 for 128 at noise density 0.15)."""
    if budget.family != "t5":
        return budget.seq_len
    spans = SpanCorruption(tuple(T5.sentinel_ids), eos_id=T5.ids["eos_id"], pad_id=T5.ids["pad_id"],
                           noise_density=budget.mask_rate)  # fmt: skip
    return spans.raw_length(budget.seq_len)[0]


def model_shape(budget: Budget) -> dict[str, Any]:
    """PretrainConfig's architecture field for the budget's family (T5 v1.1 has no norm/position knobs)."""
    if budget.family == "t5":
        return {"t5": T5Shape(size=budget.size, dropout=budget.dropout)}
    return {
        "shape": EncoderShape(
            size=budget.size, norm=budget.norm, dropout=budget.dropout, positions=budget.positions
        )
    }


def validation_curve(workdir: Path) -> list[dict[str, float]]:
    """The val_* figures logged during pre-training (empty when the stage was reused)."""
    path = workdir / CURVE
    if not path.is_file():
        return []
    curve = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        val = {k: v for k, v in record.get("metrics", {}).items() if k.startswith("val_")}
        if val:
            curve.append({"step": record["step"], **val})
    return curve


def finetune_and_evaluate(
    checkpoint: Artifact,
    downstream: Path,
    tasks: tuple[str, ...],
    budget: Budget,
    workdir: Path,
    **options: Any,
) -> dict:
    """One fine-tune run (FinetuneConfig options in `options`) and its dev report, with the fine-tune
    stage's summary (steps, train losses, padding waste) under ``finetune_summary``.

    With ``budget.selection_size``, that many train examples per task are held out of fine-tuning
    and scored as well: their report is under ``selection``, apart from the dev figures, so a
    recipe can be chosen on ``selection`` and reported on dev.
    """
    held_out = SelectionSplit(size=budget.selection_size) if budget.selection_size else None
    cfg = FinetuneConfig(
        data_dir=str(downstream),
        tasks=tasks,
        batch_size=budget.finetune_batch,
        train=TrainSettings(lr=budget.lr, max_steps=budget.finetune_steps, precision=budget.precision),
        mixing_cap_k=budget.mixing_cap_k,
        max_seq_len=budget.seq_len,
        max_train_examples_per_task=budget.max_train_examples,
        **({"pooling": budget.pooling} if budget.family == "bert" else {}),  # T5 has no pooled heads
        group_by_length=budget.group_by_length,
        hold_out=held_out,
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
    out = json.loads(report.file(REPORT).read_text()) | {"finetune_summary": dict(tuned.summary)}
    if held_out is not None:
        on_selection = eval_cfg.model_copy(update={"split": "selection", "selection": held_out})
        selection = evaluate_checkpoint(on_selection, tuned, workdir=workdir, sink=NullSink())
        out["selection"] = json.loads(selection.file(REPORT).read_text())
    return out


def over_seeds(per_seed: dict[str, dict]) -> dict:
    """A run's report: per-metric medians over its seeds (dev, and selection when held out),
    the seeds listed, and every seed's own report under ``per_seed``."""
    reports = list(per_seed.values())
    out = median_report(reports) | {"seeds": [int(s) for s in per_seed], "per_seed": per_seed}
    if all("selection" in r for r in reports):
        out["selection"] = median_report([r["selection"] for r in reports])
    return out


def headline(task: str, metrics: dict[str, float]) -> str:
    """The task's own reported numbers (NER: entity F1; its per-type breakdown stays in the JSON)."""
    return " / ".join(f"{metrics[k]:.1f}" for k in TASKS[task].metric_keys())


def print_table(results: dict[str, dict]) -> None:
    runs = list(results)
    tasks = list(next(iter(results.values()))["per_task"])
    print(f"{'task':<20}" + "".join(f"{r:>24}" for r in runs))
    for task in tasks:
        print(f"{task:<20}" + "".join(f"{headline(task, results[r]['per_task'][task]):>24}" for r in runs))
    for key in ("glue_avg", "glue_avg_with_wnli"):
        if key in results[runs[0]]:
            print(f"{key:<20}" + "".join(f"{results[r][key]:>24.2f}" for r in runs))
    print(f"({results[runs[0]].get('glue_avg_name', '')}; metrics as listed in the JSON, 0-100)")


def override(budget: Budget, args: argparse.Namespace) -> Budget:
    """The budget with any command-line overrides applied."""
    changes = {
        "size": args.size,
        "pretrain_minutes": args.pretrain_minutes,
        "pretrain_batch": args.pretrain_batch,
        "finetune_steps": args.finetune_steps,
        "mixing_cap_k": args.mixing_cap_k,
        "lr": args.finetune_lr,
        "pooling": args.pooling,
        "corpus_files": args.corpus_files,
        "precision": args.precision,
        "group_by_length": args.group_by_length or None,
        "selection_size": args.selection_size,
    }
    family = T5_BUDGET if args.family == "t5" else {}
    budget = replace(budget, **family, **{k: v for k, v in changes.items() if v is not None})
    return replace(budget, **dict(budget_setting(budget, item) for item in args.set))


def budget_setting(budget: Budget, item: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` for any Budget field, VALUE parsed as that field's type (a recipe knob
    without its own flag: ``mask_rate=0.15``, ``seq_len=64``, ``objective=electra``)."""
    name, sep, text = item.partition("=")
    fields = {f.name: f for f in dataclasses.fields(Budget)}
    if not sep or name not in fields:
        raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
    current = getattr(budget, name)
    if text.lower() == "none" and "None" in str(fields[name].type):
        return name, None
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return name, text.lower() == "true"
        kind = type(current) if current is not None else (int if "int" in str(fields[name].type) else float)
        return name, kind(text)
    except ValueError:
        wanted = "bool" if isinstance(current, bool) else kind.__name__
        raise SystemExit(f"--set {item!r}: {text!r} is not a {wanted}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dir with corpus/, glue/ and squad/")
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="a few CPU minutes on a tiny slice")
    parser.add_argument("--workdir", type=Path, default=None, help="stage dirs (default .bench/glue[-quick])")
    parser.add_argument(
        "--family", choices=("bert", "t5"), default="bert",
        help="t5: the T5 v1.1 encoder-decoder of the same size name, span corruption, text-to-text "
        "fine-tuning, with the t5-small preset's optimiser settings (T5_BUDGET)",
    )  # fmt: skip
    parser.add_argument("--size", default=None, help="override the model size (tiny, mini, small, ...)")
    parser.add_argument(
        "--pretrain-minutes", type=float, default=None, help="override the pre-training budget"
    )
    parser.add_argument("--pretrain-batch", type=int, default=None, help="override the pre-training batch")
    parser.add_argument("--finetune-steps", type=int, default=None, help="override the fine-tuning steps")
    parser.add_argument("--mixing-cap-k", type=int, default=None, help="override the mixing cap K")
    parser.add_argument("--finetune-lr", type=float, default=None, help="override the fine-tuning peak LR")
    parser.add_argument("--pooling", choices=("cls", "mean"), default=None, help="override head pooling")
    parser.add_argument("--corpus-files", type=int, default=None, help="override the number of corpus files")
    parser.add_argument(
        "--precision", choices=("bf16", "fp32"), default=None, help="override autocast precision"
    )
    parser.add_argument(
        "--seed", default="0",
        help="fine-tuning seed(s), comma-separated: each run is repeated per seed and reported as the "
        "per-metric median, with every seed's report under `per_seed`",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override any Budget field (repeatable), e.g. --set mask_rate=0.15 --set objective=electra",
    )  # fmt: skip
    parser.add_argument(
        "--tasks", default=None, help="comma-separated downstream tasks (default: all present)"
    )
    parser.add_argument("--group-by-length", action="store_true", help="length-grouped fine-tuning batches")
    parser.add_argument(
        "--selection-size", type=int, default=None,
        help="hold out N train examples per task and report them apart (`selection`) from dev",
    )  # fmt: skip
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        help=f"comma-separated subset of {','.join(RUNS)} (e.g. more seeds of the transfer comparison)",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(RUNS))
    if unknown or not chosen:  # checked before any work
        parser.error(f"--runs: unknown {unknown}; choose from {list(RUNS)}")
    try:
        seeds = tuple(dict.fromkeys(int(x) for x in args.seed.split(",") if x.strip()))
    except ValueError:
        parser.error(f"--seed: {args.seed!r} is not a comma-separated list of integers")
    if not seeds or min(seeds) < 0:
        parser.error(f"--seed: {args.seed!r}: give one or more seeds >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    budget = override(QUICK if args.quick else FULL, args)
    workdir = (args.workdir or Path(".bench") / ("glue-quick" if args.quick else "glue")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started, started_utc, seconds = time.perf_counter(), now(), {}
    data = args.data.resolve()
    checkpoint = pretrain_pipeline(data, workdir, budget, seconds)
    downstream = downstream_dir(data, workdir)
    tasks = available_tasks(downstream)
    if args.tasks:
        wanted = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
        missing = [t for t in wanted if t not in tasks]
        if missing:
            raise SystemExit(
                f"--tasks: {missing} have no train/dev files under {downstream} (present: {tasks})"
            )
        tasks = wanted
    results: dict[str, dict] = {}

    def write(partial: bool) -> None:
        """The JSON so far: a long run that is stopped still leaves its finished rows."""
        payload = {
            "provenance": provenance(("torch", "tokenizers", "transformers"), started_utc),
            "budget": asdict(budget) | {"quick": args.quick, "tasks": list(tasks), "seeds": list(seeds)},
            "pretrain": checkpoint.summary,
            "pretrain_validation_curve": validation_curve(workdir),
            **results,
            "seconds": seconds,
            "partial": partial,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
        text = json.dumps(payload, indent=2)  # reports name their data dir: no machine's paths in results
        text = text.replace(str(workdir), "<workdir>").replace(str(data), portable_path(data))
        args.out.write_text(text)

    for name in chosen:
        per_seed: dict[str, dict] = {}
        for seed in seeds:
            start = time.perf_counter()
            options = RUNS[name] | {"seeds": (seed,)}
            per_seed[str(seed)] = finetune_and_evaluate(
                checkpoint, downstream, tasks, budget, workdir, **options
            )
            seconds[f"finetune+evaluate/{name}/seed{seed}"] = round(time.perf_counter() - start, 1)
            results[name] = over_seeds(per_seed)
            write(partial=True)
    seconds["total"] = round(time.perf_counter() - started, 1)
    print_table(results)
    write(partial=False)
    print(f"wrote {args.out} in {seconds['total']:.0f}s")


if __name__ == "__main__":
    main()
