"""Step 3 of benchmarks/gpu_check.py: GLUE quality bought per GPU-minute of pre-training.

The project's own pure stage functions, without Prefect or MLflow (as benchmarks/glue_bench.py):

1. ``data``: ingest -> dedup -> tokenizer (WordPiece, ``QUALITY_VOCAB``) -> pack (128-token rows)
   on the carried Wikipedia files. These run in a separate, lower-priority process started
   before step 1 (``start_data_stages``), so the CPU work overlaps the GPU checks; the
   tokenizer and pack use every core.
2. ``pretrain``: MLM on ``base`` with pre-LN, no dropout, 25 % masking, batch 128, bf16 autocast,
   peak LR 5e-4 following the clock to zero at the deadline (``TrainSettings.max_minutes``):
   ``PRETRAIN_MINUTES`` (4), fewer if the run's 9-minute budget would not leave room for the
   two fine-tuning runs. Epochs repeat if the budget consumes more than the carried tokens.
   ``torch.compile`` is used only if step 2's figures say it pays within that budget
   (compiled tokens/s x (budget - 2 compiles) > eager tokens/s x budget; two, because the real
   batches' masked count varies, which makes dynamo recompile once with dynamic shapes).
3. ``finetune`` x {``pretrained``, ``random_init``}: multi-task fine-tuning on CoLA, SST-2, MRPC,
   STS-B, RTE (examples-proportional mixing capped at K = 8,192, batch 32, LR 1e-4, mean
   pooling, seed 0), ``FINETUNE_MINUTES`` of training each (the same budget for both), then
   dev-set scoring with the evaluate stage. ``glue_avg`` is the GLUE average of those five
   tasks (0-100).

In the dry run the same stages run on CPU on the tiny synthetic data, with a toy budget.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_common import Context, run_check

QUALITY_VOCAB = 30_522
SEQ_LEN = 128
TASK_NAMES = ("CoLA", "SST-2", "MRPC", "STS-B", "RTE")
PRETRAIN_MINUTES = 4.0
MIN_PRETRAIN_MINUTES = 0.5
PRETRAIN_OVERHEAD_S = 20.0  # model build, final validation, checkpoint writes
FINETUNE_MINUTES = 0.4  # training time of each of the two fine-tuning runs
FINETUNE_OVERHEAD_S = 20.0  # per run: GLUE tokenization, model build, save, dev scoring
FULL = {
    "size": "base",
    "pretrain_batch": 128,
    "pretrain_lr": 5e-4,
    "mask_rate": 0.25,
    "eval_batches": 20,
    "log_every": 100,
    "finetune_batch": 32,
    "finetune_lr": 1e-4,
    "finetune_max_steps": 4000,
    "mixing_cap_k": 8192,
    "max_docs": None,
    "vocab": QUALITY_VOCAB,
    "max_train_examples": None,
    "max_eval_examples": None,
}
DRY = FULL | {
    "size": "tiny",
    "pretrain_batch": 8,
    "pretrain_steps": 6,
    "eval_batches": 2,
    "log_every": 2,
    "finetune_batch": 8,
    "finetune_max_steps": 4,
    "max_docs": 300,
    "vocab": 512,
    "max_train_examples": 32,
    "max_eval_examples": 16,
    "corpus_files": 2,
}


def recipe(dry: bool) -> dict[str, Any]:
    return DRY if dry else FULL


def corpus_paths(data: Path, dry: bool) -> list[str]:
    files = sorted((data / "corpus").rglob("wiki_*"))
    if not files:
        raise FileNotFoundError(f"no WikiExtractor files (wiki_*) under {data / 'corpus'}")
    return [str(p) for p in (files[: DRY["corpus_files"]] if dry else files)]


def start_data_stages(data: Path, workdir: Path, script: Path, env: dict[str, str], dry: bool) -> dict:
    """Start ingest -> dedup -> tokenizer -> pack in a child process; returns its handle and files."""
    spec = workdir / "data_stages.json"
    out = workdir / "data_stages.result.json"
    out.unlink(missing_ok=True)
    r = recipe(dry)
    spec.write_text(
        json.dumps(
            {
                "paths": corpus_paths(data, dry),
                "workdir": str(workdir),
                "vocab": r["vocab"],
                "seq_len": SEQ_LEN,
                "max_docs": r["max_docs"],
                "out": str(out),
            }
        )
    )
    log = (workdir / "data_stages.log").open("w")
    child_env = env | {"TOKENIZERS_PARALLELISM": "true"}  # the data stages want every core
    proc = subprocess.Popen(
        [sys.executable, str(script), "--data-stages", str(spec)], env=child_env, stdout=log, stderr=log
    )
    return {"proc": proc, "out": out, "log": workdir / "data_stages.log", "started": time.monotonic()}


def data_stages_worker(spec_path: Path) -> None:
    """The child process: the four data stages, timed; writes their artifacts as JSON."""
    from tasks.data.dedup import DedupConfig, dedup
    from tasks.data.ingest import IngestConfig, ingest
    from tasks.data.pack import PackConfig, pack
    from tasks.data.tokenizer import TokenizerConfig, train_tokenizer
    from tasks.sink import NullSink

    with contextlib.suppress(OSError):
        os.nice(5)  # the GPU checks' launching thread goes first
    spec = json.loads(spec_path.read_text())
    workdir, seconds, artifacts = Path(spec["workdir"]), {}, {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        clock = time.perf_counter()
        artifact = fn(*args, workdir=workdir, sink=NullSink())
        seconds[name] = round(time.perf_counter() - clock, 2)
        artifacts[name] = artifact
        return artifact

    docs = timed(
        "ingest", ingest, IngestConfig(paths=tuple(spec["paths"]), format="wiki", max_docs=spec["max_docs"])
    )
    unique = timed("dedup", dedup, DedupConfig(), docs)
    tokenizer = timed("tokenizer", train_tokenizer, TokenizerConfig(vocab_size=spec["vocab"]), unique)
    timed("pack", pack, PackConfig(seq_len=spec["seq_len"]), unique, tokenizer)
    Path(spec["out"]).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "cpus": len(os.sched_getaffinity(0)),
                "files": len(spec["paths"]),
                "artifacts": {k: a.model_dump(mode="json") for k, a in artifacts.items()},
            }
        )
    )


def downstream_dir(data: Path, workdir: Path) -> Path:
    """glue/<TASK>/{train,dev}.tsv under the workdir, unpacked from the carried .tsv.gz (or copied)."""
    root = workdir / "downstream"
    for task in TASK_NAMES:
        for name in ("train.tsv", "dev.tsv"):
            src, target = data / "glue" / task / name, root / "glue" / task / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_file():
                shutil.copyfile(src, target)
            elif src.with_name(name + ".gz").is_file():
                with gzip.open(src.with_name(name + ".gz"), "rb") as fin, target.open("wb") as fout:
                    shutil.copyfileobj(fin, fout)
            else:
                raise FileNotFoundError(f"{src}(.gz): missing (GLUE {task})")
    return root


def run(entry: dict[str, Any], ctx: Context, data: Path, stages: dict) -> None:
    state: dict[str, Any] = {}
    need = 0.0 if ctx.dry else 60 * MIN_PRETRAIN_MINUTES + PRETRAIN_OVERHEAD_S + finetune_reserve_s()
    run_check(entry, "data", lambda: wait_for_data(ctx, stages, state, keep_s=need), ctx, 0)
    run_check(entry, "pretrain", lambda: pretrain_run(ctx, state), ctx, need)
    finetune = entry.setdefault("finetune", {})
    downstream = downstream_dir(data, ctx.workdir)
    for name, init in (("pretrained", "pretrained"), ("random_init", "random")):
        need = 0.0 if ctx.dry else 60 * FINETUNE_MINUTES + FINETUNE_OVERHEAD_S
        run_check(finetune, name, lambda init=init: finetune_run(ctx, state, downstream, init), ctx, need)
    entry["glue_avg"] = glue_summary(entry)
    ctx.write()


def finetune_reserve_s() -> float:
    return 2 * (60 * FINETUNE_MINUTES + FINETUNE_OVERHEAD_S)


def wait_for_data(ctx: Context, stages: dict, state: dict, keep_s: float) -> dict[str, Any]:
    """Wait for the data stages' process, leaving ``keep_s`` of the budget for what follows."""
    from tasks.store.artifact import Artifact

    proc: subprocess.Popen = stages["proc"]
    waited = time.monotonic()
    try:
        proc.wait(timeout=None if ctx.dry else max(ctx.budget.left() - keep_s, 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise TimeoutError("the data stages did not finish in time for the shortest pre-training") from None
    if proc.returncode != 0 or not stages["out"].is_file():
        tail = stages["log"].read_text()[-2000:] if stages["log"].is_file() else ""
        raise RuntimeError(f"data stages exited {proc.returncode}: {tail}")
    result = json.loads(stages["out"].read_text())
    state["artifacts"] = {k: Artifact.model_validate(v) for k, v in result["artifacts"].items()}
    summaries = {k: a.summary for k, a in state["artifacts"].items()}
    return {
        "passed": True,
        "files": result["files"],
        "cpus": result["cpus"],
        "stage_seconds": result["seconds"],
        "wall_s_since_start": round(time.monotonic() - stages["started"], 2),
        "waited_s": round(time.monotonic() - waited, 2),
        "summaries": summaries,
        "reason": "overlapped with steps 1-2 in a separate process",
    }


def compile_choice(ctx: Context, minutes: float) -> tuple[bool, str]:
    """torch.compile for pre-training iff step 2 measured that it pays within ``minutes``."""
    if not ctx.cuda:
        return False, "CPU dry run: eager"
    figures = ctx.notes.get("throughput", {}).get(f"vocab_{QUALITY_VOCAB}", {})
    eager = (figures.get("bertflow_eager") or {}).get("tokens_per_s")
    compiled = (figures.get("bertflow_compiled") or {}).get("tokens_per_s")
    compile_s = (figures.get("bertflow_compiled") or {}).get("compile_s")
    if not (eager and compiled and compile_s is not None):
        return False, "eager: step 2 has no compiled figure to justify compiling"
    budget_s = 60 * minutes
    eager_tokens, compiled_tokens = eager * budget_s, compiled * max(budget_s - 2 * compile_s, 0.0)
    use = compiled_tokens > eager_tokens
    return use, (
        f"{'compiled' if use else 'eager'}: step 2 predicts {compiled_tokens / 1e6:.0f} M tokens compiled "
        f"(after 2 compiles of {compile_s:.0f} s) vs {eager_tokens / 1e6:.0f} M eager in {minutes:.2f} min"
    )


def pretrain_run(ctx: Context, state: dict) -> dict[str, Any]:
    from tasks.engine.launch import JsonlSink
    from tasks.engine.settings import TrainSettings
    from tasks.train.pretrain import pretrain
    from tasks.train.pretrain_config import PretrainConfig
    from tasks.train.shape import EncoderShape

    if "artifacts" not in state:
        return {"passed": None, "reason": "skipped: the data stages did not finish"}
    r = recipe(ctx.dry)
    if ctx.dry:
        minutes, budget_note = None, "dry run: a fixed number of steps"
    else:
        room = (ctx.budget.left() - PRETRAIN_OVERHEAD_S - finetune_reserve_s()) / 60
        minutes = round(min(PRETRAIN_MINUTES, room), 2)
        budget_note = (
            f"{minutes} min (the full {PRETRAIN_MINUTES} min)"
            if minutes >= PRETRAIN_MINUTES
            else f"{minutes} min: cut from {PRETRAIN_MINUTES} so that fine-tuning fits the run's budget"
        )
    use_compile, compile_note = compile_choice(ctx, minutes or 0.0)
    train = TrainSettings(
        max_steps=r.get("pretrain_steps", 10**7),
        max_minutes=minutes,
        lr=r["pretrain_lr"],
        warmup_ratio=0.06,
        eval_every=0,
        checkpoint_every=0,
        log_every=r["log_every"],
        precision=ctx.precision,
        compile=use_compile,
    )
    cfg = PretrainConfig(
        shape=EncoderShape(size=r["size"], norm="pre", dropout=0.0),
        train=train,
        batch_size=r["pretrain_batch"],
        mask_rate=r["mask_rate"],
        eval_batches=r["eval_batches"],
        device="cuda" if ctx.cuda else "cpu",
    )
    artifacts = state["artifacts"]
    curve = ctx.workdir / "pretrain_metrics.jsonl"
    curve.unlink(missing_ok=True)
    clock = time.perf_counter()
    checkpoint = pretrain(
        cfg, artifacts["pack"], artifacts["tokenizer"], workdir=ctx.workdir, sink=JsonlSink(curve)
    )
    wall_s = time.perf_counter() - clock
    state["checkpoint"] = checkpoint
    summary = dict(checkpoint.summary)
    train_tokens = (artifacts["pack"].summary.get("tokens") or {}).get("train")
    return {
        "passed": summary.get("final_loss") is not None,
        "reason": budget_note,
        "minutes_budget": minutes,
        "compile": use_compile,
        "compile_decision": compile_note,
        "recipe": {
            "size": r["size"],
            "norm": "pre",
            "dropout": 0.0,
            "batch": r["pretrain_batch"],
            "lr": r["pretrain_lr"],
            "mask_rate": r["mask_rate"],
            "seq_len": SEQ_LEN,
            "precision": ctx.precision,
        },
        "summary": summary,
        "epochs": summary["tokens"] / train_tokens if train_tokens else None,
        "wall_s": round(wall_s, 2),
        "cached": checkpoint.cached,
        "curve": read_curve(curve),
    }


def read_curve(path: Path, keep: int = 40) -> list[dict[str, float]]:
    """Logged (step, loss, tokens/s, MFU, val_*) rows, thinned to about ``keep`` rows."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "metrics" in record:
            wanted = ("loss", "tokens_per_s", "mfu", "lr", "val_loss", "val_mlm_accuracy")
            rows.append(
                {"step": record["step"], **{k: v for k, v in record["metrics"].items() if k in wanted}}
            )
    stride = max(1, len(rows) // keep)
    return rows[::stride] + ([rows[-1]] if rows and (len(rows) - 1) % stride else [])


def finetune_run(ctx: Context, state: dict, downstream: Path, init: str) -> dict[str, Any]:
    from tasks.engine.settings import TrainSettings
    from tasks.judge.evaluation import REPORT, EvalConfig, evaluate_checkpoint
    from tasks.sink import NullSink
    from tasks.train.finetune import finetune
    from tasks.train.finetune_config import FinetuneConfig

    if "checkpoint" not in state:
        return {"passed": None, "reason": "skipped: no pre-trained checkpoint (its shape and tokenizer)"}
    r = recipe(ctx.dry)
    minutes = None if ctx.dry else FINETUNE_MINUTES
    cfg = FinetuneConfig(
        data_dir=str(downstream),
        tasks=TASK_NAMES,
        init=init,
        batch_size=r["finetune_batch"],
        train=TrainSettings(
            lr=r["finetune_lr"],
            max_steps=r["finetune_max_steps"],
            max_minutes=minutes,
            warmup_ratio=0.1,
            checkpoint_every=0,
            log_every=50,
            precision=ctx.precision,
        ),
        mixing_cap_k=r["mixing_cap_k"],
        max_seq_len=SEQ_LEN,
        max_train_examples_per_task=r["max_train_examples"],
        pooling="mean",
    )
    clock = time.perf_counter()
    tuned = finetune(cfg, state["checkpoint"], workdir=ctx.workdir, sink=NullSink())
    finetune_s = time.perf_counter() - clock
    eval_cfg = EvalConfig(
        data_dir=str(downstream),
        tasks=TASK_NAMES,
        max_seq_len=SEQ_LEN,
        max_examples_per_task=r["max_eval_examples"],
    )
    clock = time.perf_counter()
    report = json.loads(
        evaluate_checkpoint(eval_cfg, tuned, workdir=ctx.workdir, sink=NullSink()).file(REPORT).read_text()
    )
    return {
        "passed": report.get("glue_avg") is not None,
        "init": init,
        "minutes_budget": minutes,
        "steps": tuned.summary.get("steps"),
        "finetune_s": round(finetune_s, 2),
        "evaluate_s": round(time.perf_counter() - clock, 2),
        "per_task": report["per_task"],
        "glue_avg": report.get("glue_avg"),
        "glue_avg_name": report.get("glue_avg_name"),
        "dev_examples": report.get("dev_examples"),
        "recipe": {
            "tasks": list(TASK_NAMES),
            "batch": r["finetune_batch"],
            "lr": r["finetune_lr"],
            "max_steps": r["finetune_max_steps"],
            "mixing_cap_k": r["mixing_cap_k"],
            "pooling": "mean",
            "seed": 0,
            "precision": ctx.precision,
        },
    }


def glue_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """glue_avg of both runs, their difference, and the GPU-minutes behind them."""
    runs = entry.get("finetune", {})
    pre, rnd = (runs.get(k, {}).get("glue_avg") for k in ("pretrained", "random_init"))
    pretrain = entry.get("pretrain", {})
    pretrain_min = (pretrain.get("summary") or {}).get("seconds")
    pretrain_min = pretrain_min / 60 if pretrain_min else None
    delta = pre - rnd if pre is not None and rnd is not None else None
    missing = [k for k, v in (("pretrained", pre), ("random_init", rnd)) if v is None]
    return {
        "pretrained": pre,
        "random_init": rnd,
        "delta": delta,
        "pretrain_minutes": pretrain_min,
        "delta_per_pretrain_minute": delta / pretrain_min if delta is not None and pretrain_min else None,
        "finetune_minutes_each": (runs.get("pretrained") or {}).get("minutes_budget"),
        "reason": f"no glue_avg for {missing}: see finetune.<run>.reason" if missing else None,
    }
