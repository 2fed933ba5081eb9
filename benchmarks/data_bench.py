"""Data-stage benchmark: ingest -> dedup -> tokenizer -> pack on a real corpus, plus planted
near-duplicates and side-by-side baselines.

    python benchmarks/data_bench.py --corpus ../shared/data/corpus/enwiki-2014-slice \
        --out benchmarks/results/data_bench.json [--quick] [--max-files N]
    python benchmarks/data_bench.py --corpus ../shared/data/corpus/enwiki-2014-slice \
        --workers 1,2 --out benchmarks/results/data_bench_workers.json [--quick]

The second form is the scaling study of ``benchmarks/data_scaling.py`` instead of the figures
below.

Figures (table on stdout, JSON to --out):

* per stage: wall seconds, MB/s of the text it reads, and peak RSS (each stage runs in a
  fresh spawned child process; its peak is ``ru_maxrss`` of the child plus that of its own
  worker processes, a conservative upper bound for the stage);
* ``dedup_recall`` / ``dedup_precision``: real paragraphs of the corpus mixed with planted
  copies (words replaced, sentences dropped or appended) over a range of exact word-5-gram
  Jaccard, run through the real ``dedup`` stage. Recall counts planted pairs with true
  Jaccard >= 0.85 whose copy was dropped with its original kept; precision (strict) is the share
  of dropped (document, kept) pairs whose exact Jaccard reaches the 0.8 threshold (the looser
  share >= 0.7 is reported too, and both for ``verify="estimate"``);
* ``dedup_speedup_vs_datasketch`` / ``dedup_speedup_vs_rensa``: end to end, our whole dedup stage
  (Parquet in and out, exact pass, MinHash, LSH, exact verification) vs each baseline's MinHash +
  LSH query-then-insert loop on the same normalized texts in memory, with the same word-5-gram
  shingles, num_perm and threshold, the baseline in its fastest configuration that reuses its
  permutations (datasketch: ``MinHash.bulk``; rensa: ``RMinHash.from_token_sets``); medians of
  paired per-block ratios, ranges and every block's seconds in the JSON (see ``planted_dups.py``);
  ``dedup_lsh_speedup_vs_*``: like for like, our in-memory MinHash + LSH + estimate filter vs the
  same loops (neither verifies exactly); each baseline's recall / precision on the planted set;
* ``datasketch_version`` / ``rensa_version`` and, in ``provenance``, the command line, dates,
  machine (platform, CPU, load average) and library versions;
* the full-corpus dedup stage's exact-verification seconds (``dedup_verify_seconds``);
* ``pack_vs_tokenizers_ratio``: bare ``Tokenizer.encode_batch`` over texts already in memory
  (seconds) divided by the whole pack stage's seconds on the same documents and cores;
* ``pack_reread_exact``: the packed files re-read to exactly the tokenizer's ids (checked on
  the first ``--check-docs`` documents of each split).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.planted_dups import planted_benchmark
from benchmarks.provenance import now, portable_path, provenance
from tasks.data.corpus.shards import iter_doc_batches, shard_paths
from tasks.data.dedup import DedupConfig, dedup
from tasks.data.ingest import IngestConfig, ingest
from tasks.data.pack import PackConfig, open_split, pack, split_of
from tasks.data.tokenizer import SEP_ID, TokenizerConfig, load_tokenizer, train_tokenizer
from tasks.sink import MemorySink, NullSink
from tasks.store.artifact import Artifact

MB = 1e6


# --- running one measured step in a fresh process -------------------------------------------


def _measured(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """Run ``fn(*args)`` here and return (result, seconds, peak RSS GB of this process + children)."""
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    kb = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return result, seconds, kb / 1024**2


def in_child(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """``_measured(fn, *args)`` in a fresh spawned process, so its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measured, fn, *args).result()


# --- the four stages -------------------------------------------------------------------------


def run_ingest(paths: tuple[str, ...], workdir: Path) -> Artifact:
    return ingest(IngestConfig(paths=paths), workdir=workdir, sink=NullSink())


def run_dedup(docs: Artifact, workdir: Path, cfg: DedupConfig) -> tuple[Artifact, float]:
    """The dedup stage and the seconds its exact verification took (logged to the sink)."""
    sink = MemorySink()
    art = dedup(cfg, docs, workdir=workdir, sink=sink)
    return art, sink.series("verify_seconds")[-1][1]


def run_tokenizer(docs: Artifact, workdir: Path, vocab_size: int) -> Artifact:
    return train_tokenizer(TokenizerConfig(vocab_size=vocab_size), docs, workdir=workdir, sink=NullSink())


def run_pack(docs: Artifact, tok: Artifact, workdir: Path) -> Artifact:
    return pack(PackConfig(), docs, tok, workdir=workdir, sink=NullSink())


def text_bytes(store: Path) -> int:
    """UTF-8 bytes of all document texts of a document store."""
    return sum(
        int(pc.sum(pc.binary_length(pq.read_table(p, columns=["text"])["text"])).as_py() or 0)
        for p in shard_paths(store)
    )


def input_bytes(paths: tuple[str, ...]) -> int:
    """Uncompressed size of the corpus files (gzip's trailer holds it mod 2**32; files here are small)."""
    total = 0
    for pattern in paths:
        root = Path(pattern)
        for f in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            with f.open("rb") as fh:
                if f.suffix == ".gz":
                    fh.seek(-4, os.SEEK_END)
                    total += int.from_bytes(fh.read(4), "little")
                else:
                    total += f.stat().st_size
    return total


def corpus_paths(corpus: Path, max_files: int | None) -> tuple[str, ...]:
    """The whole corpus directory, or its first ``max_files`` files (sorted by path)."""
    if not max_files:
        return (str(corpus),)
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith("."))
    return tuple(str(p) for p in files[:max_files])


def run_stages(args: argparse.Namespace, workdir: Path) -> tuple[dict, dict[str, Artifact]]:
    """Run the four stages, each in its own process; per-stage seconds, MB/s and peak RSS."""
    paths = corpus_paths(args.corpus, args.max_files)
    stages: dict[str, dict] = {}
    arts: dict[str, Artifact] = {}
    arts["ingest"], s, rss = in_child(run_ingest, paths, workdir)
    stages["ingest"] = {"seconds": s, "mb": input_bytes(paths) / MB, "peak_rss_gb": rss}
    ingest_mb = text_bytes(arts["ingest"].dir) / MB
    (arts["dedup"], verify_s), s, rss = in_child(run_dedup, arts["ingest"], workdir, DedupConfig())
    stages["dedup"] = {"seconds": s, "mb": ingest_mb, "peak_rss_gb": rss, "verify_seconds": verify_s}
    dedup_mb = text_bytes(arts["dedup"].dir) / MB
    arts["tokenizer"], s, rss = in_child(run_tokenizer, arts["dedup"], workdir, args.vocab_size)
    stages["tokenizer"] = {"seconds": s, "mb": dedup_mb, "peak_rss_gb": rss}
    arts["pack"], s, rss = in_child(run_pack, arts["dedup"], arts["tokenizer"], workdir)
    stages["pack"] = {"seconds": s, "mb": dedup_mb, "peak_rss_gb": rss}
    for row in stages.values():
        row["mb_per_s"] = row["mb"] / row["seconds"]
    return stages, arts


# --- pack: bare encode_batch baseline and the re-read check ---------------------------------


def bare_encode_seconds(docs: Artifact, tok: Artifact, batch_docs: int) -> float:
    """Seconds of ``encode_batch`` alone over every document, texts already in memory."""
    tokenizer = load_tokenizer(tok.dir)
    batches = [texts for _, texts in iter_doc_batches(docs.dir, batch_docs)]
    start = time.perf_counter()
    for texts in batches:
        tokenizer.encode_batch(texts, add_special_tokens=False)
    return time.perf_counter() - start


def pack_rereads_exactly(docs: Artifact, tok: Artifact, packed: Artifact, check_docs: int) -> bool:
    """Whether each split's rows, re-read, are exactly ``doc [SEP] doc [SEP] ...`` of the tokenizer's ids."""
    tokenizer, cfg = load_tokenizer(tok.dir), PackConfig()
    expected: dict[str, list[int]] = {"train": [], "validation": []}
    seen = 0
    for ids, texts in iter_doc_batches(docs.dir, 1000):
        for doc_id, enc in zip(ids, tokenizer.encode_batch(texts, add_special_tokens=False), strict=True):
            if enc.ids:
                expected[split_of(doc_id, cfg.seed, cfg.validation_fraction)] += [*enc.ids, SEP_ID]
        seen += len(ids)
        if seen >= check_docs:
            break
    for split, stream in expected.items():
        rows = open_split(packed.dir, split)  # (n_rows, seq_len)
        if len(rows) and not (rows[:, 0] == 2).all():
            return False
        n = min(len(stream) // (cfg.seq_len - 1) + 1, len(rows))
        got = np.asarray(rows[:n, 1:]).reshape(-1)
        got = got[got != 0] if n == len(rows) else got  # only the very last row has padding
        if got[: len(stream)].tolist() != stream[: got.size]:
            return False
    return True


def pack_checks(args: argparse.Namespace, arts: dict[str, Artifact]) -> dict:
    bare, _, _ = in_child(bare_encode_seconds, arts["dedup"], arts["tokenizer"], PackConfig().batch_docs)
    exact, _, _ = in_child(
        pack_rereads_exactly, arts["dedup"], arts["tokenizer"], arts["pack"], args.check_docs
    )
    return {
        "bare_encode_batch_seconds": bare,
        "pack_reread_exact": exact,
        "pack_reread_docs": args.check_docs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="first 8 files, small planted set, 3 blocks")
    parser.add_argument(
        "--max-files", type=int, default=None, help="only the first N corpus files (default: all; quick: 8)"
    )
    parser.add_argument(
        "--blocks", type=int, default=None, help="paired timing blocks of the dedup comparison (7; quick 3)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="stage outputs (default: a temp dir)")
    parser.add_argument("--vocab-size", type=int, default=32_000)
    parser.add_argument("--check-docs", type=int, default=20_000)
    parser.add_argument(
        "--workers",
        help="e.g. 1,2: instead of the baselines, the small preset's data flow on a Dask LocalCluster of "
        "each size (benchmarks/data_scaling.py)",
    )
    parser.add_argument("--group-mb", type=int, default=8, help="--workers: MB of input per ingest group")
    parser.add_argument("--shard-docs", type=int, default=10_000, help="--workers: documents per shard")
    args = parser.parse_args()
    args.max_files = args.max_files or (8 if args.quick else None)
    started = now()
    if args.workers:
        workers_report(args, started)
        return
    with tempfile.TemporaryDirectory(prefix="data-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        stages, arts = run_stages(args, workdir)
        figures = pack_checks(args, arts)
        figures["pack_vs_tokenizers_ratio"] = figures["bare_encode_batch_seconds"] / stages["pack"]["seconds"]
        figures |= planted_benchmark(arts["ingest"], workdir, quick=args.quick, blocks=args.blocks)
    report = summarize(args, stages, arts, figures, started)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


PACKAGES = ("numpy", "pyarrow", "tokenizers", "datasketch", "rensa")
SCALING_PACKAGES = ("numpy", "pyarrow", "tokenizers", "prefect", "prefect-dask", "distributed")


def workers_report(args: argparse.Namespace, started: str) -> None:
    """``--workers``: the scaling study, its table on stdout and its JSON at --out."""
    from tasks.run import offline  # the settings bertflow runs with, before Prefect is imported

    offline.apply()
    workers = [int(w) for w in args.workers.split(",")]
    paths = corpus_paths(args.corpus, args.max_files)
    with tempfile.TemporaryDirectory(prefix="data-scaling-") as tmp:
        os.environ.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect"))
        from benchmarks.data_scaling import print_scaling, scaling

        study = scaling(workers, paths, args.workdir or Path(tmp) / "runs", args.group_mb, args.shard_docs)
    report = {
        "provenance": provenance(SCALING_PACKAGES, started),
        "date": started[:10],
        "corpus": portable_path(args.corpus.resolve()),
        "corpus_files": args.max_files or "all",
        "quick": args.quick,
        **study,
    }
    print_scaling(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def summarize(
    args: argparse.Namespace, stages: dict, arts: dict[str, Artifact], figures: dict, started: str
) -> dict:
    return {
        "provenance": provenance(PACKAGES, started),
        "date": started[:10],
        "corpus": portable_path(args.corpus.resolve()),
        "corpus_files": args.max_files or "all",
        "quick": args.quick,
        "stages": stages,
        "peak_rss_gb": max(s["peak_rss_gb"] for s in stages.values()),
        "summaries": {name: art.summary for name, art in arts.items()},
        "dedup_verify_seconds": stages["dedup"]["verify_seconds"],
        **figures,
    }


def print_table(report: dict) -> None:
    print(f"\n{'stage':<10} {'seconds':>9} {'MB in':>9} {'MB/s':>8} {'peak RSS GB':>12}")
    for name, s in report["stages"].items():
        print(f"{name:<10} {s['seconds']:9.1f} {s['mb']:9.1f} {s['mb_per_s']:8.2f} {s['peak_rss_gb']:12.2f}")
    for key, value in report.items():
        if isinstance(value, bool | int | float) and key != "quick":
            print(f"{key:<44} {value:.4g}" if isinstance(value, float) else f"{key:<44} {value}")
    print(f"\n{'dedup on the planted set':<30} {'seconds':>8} {'recall':>7} {'prec.':>7} {'ours x':>14}")
    for name, row in report["dedup_ours"].items():
        print(f"{name:<30} {row['seconds']['median']:8.2f} {row['recall']:7.3f} {row['precision']:7.3f}")
    for name, row in report["dedup_baselines"].items():
        x = row["speedup_of_ours_stage"]
        ratio = f"{x['median']:.2f} ({x['min']:.2f}-{x['max']:.2f})"
        quality = f"{row['recall']:7.3f} {row['precision']:7.3f}"
        print(f"{name:<30} {row['seconds']['median']:8.2f} {quality} {ratio:>14}")


if __name__ == "__main__":
    main()
