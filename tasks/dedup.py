"""Dedup: drop exact duplicates, then near-duplicates found with MinHash-LSH.

Two streaming passes over the input shards:

1. Each document's normalized text (lowercase, whitespace collapsed) is hashed; a repeat of
   an earlier hash is an exact duplicate. Documents seen for the first time get a MinHash
   signature (``num_perm`` uint32 each: 512 bytes at 128, the only per-document state kept).
2. LSH bands propose candidate pairs; each is kept only if its estimated Jaccard similarity
   reaches ``threshold`` (precision), then union-find joins pairs into clusters whose first
   document in corpus order survives. The shards are read again and survivors written out.

Outputs: ``docs-*.parquet`` (same format as ingest), ``report.json`` with counts, and
``dropped.jsonl`` with one line per dropped document (id, reason, kept_id it duplicated).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from array import array
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import IO

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.artifacts import Artifact, build_stage
from tasks.corpus.minhash import MinHasher, candidate_pairs, cluster_roots, jaccard_estimate, recall_bands
from tasks.corpus.normalize import dedup_key_text
from tasks.corpus.shards import ShardWriter, count_docs, iter_doc_batches
from tasks.engine.sink import MetricSink
from tasks.stage import StageContext, run_tracked

log = logging.getLogger(__name__)

STAGE = "dedup"
VERSION = "2"  # 2: uint32 affine permutations over crc32 word hashes (signatures changed)
_VERIFY_CHUNK = 65_536  # candidate pairs compared per array operation
# Spawned workers re-import the parent's __main__ (the CLI: Prefect, MLflow), which costs several
# seconds each; below this many documents signing inline is faster than starting a pool.
POOL_MIN_DOCS = 100_000


class DedupConfig(BaseModel):
    """Exact + MinHash-LSH near-duplicate removal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    near: bool = Field(True, description="Also remove near-duplicates (MinHash-LSH); False: exact only.")
    ngram: int = Field(5, ge=1, le=32, description="Words per shingle.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash signature length (hash functions).")
    threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Estimated Jaccard similarity that counts as duplicate."
    )
    candidate_recall: float = Field(
        0.99,
        gt=0.0,
        lt=1.0,
        description="Chance that a pair exactly at `threshold` becomes an LSH candidate (sets bands/rows).",
    )
    bands: int | None = Field(
        None, ge=1, le=1024, description="LSH bands (None: derived from threshold and candidate_recall)."
    )
    rows: int | None = Field(None, ge=1, le=1024, description="Signature rows per band (None: derived).")
    seed: int = Field(0, ge=0, description="Seed of the MinHash hash functions.")
    batch_docs: int = Field(1024, ge=1, le=1_000_000, description="Documents hashed per batch.")
    workers: int | None = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Processes computing signatures (1: inline; None: all CPU cores). Inline by default: on the "
            "shared 2-core box a 2-process pool was slower (116 s vs 98 s, 256k docs); use it on idle cores."
        ),
    )
    shard_docs: int = Field(50_000, ge=1, le=10_000_000, description="Documents per output Parquet shard.")

    @model_validator(mode="after")
    def _check_bands(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both `bands` and `rows`, or neither (then they follow `threshold`)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def worker_count(self) -> int:
        """``workers``, or the CPU cores this process may run on."""
        return self.workers or len(os.sched_getaffinity(0))

    def banding(self) -> tuple[int, int]:
        """(bands, rows) as configured, or so LSH keeps ``candidate_recall`` of pairs at ``threshold``."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return recall_bands(self.threshold, self.num_perm, self.candidate_recall)


class _FirstPass:
    """State of pass 1: which input documents are first occurrences, and their signatures."""

    def __init__(self) -> None:
        self.seen: dict[bytes, int] = {}  # exact-text digest -> index among first occurrences
        self.unique_ids: list[str] = []
        self.unique_of_input = array("q")  # per input document: its unique index, or -1 (exact dup)
        self.signatures: list[np.ndarray] = []  # (batch, num_perm) uint32 each


def dedup(
    cfg: DedupConfig, docs: Artifact, *, workdir: Path, sink: MetricSink, run_id: str | None = None
) -> Artifact:
    """Remove exact and near-duplicate documents from a document-shard artifact."""

    def build(out: Path) -> dict:
        total = count_docs(docs.dir)
        with (out / "dropped.jsonl").open("w") as dropped:
            first = _exact_pass(cfg, docs.dir, dropped, sink, total)
            near_root, pairs = _near_duplicates(cfg, first)
            kept = _write_survivors(cfg, docs.dir, out, first, near_root, dropped)
        report = _report(cfg, total, first, kept, pairs)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        sink.log_metrics({k: float(v) for k, v in report.items() if isinstance(v, int | float)}, step=0)
        log.info(
            "dedup: kept %d of %d (exact %d, near %d)",
            kept,
            total,
            report["dropped_exact"],
            report["dropped_near"],
        )
        return report

    return build_stage(
        workdir=workdir, stage=STAGE, version=VERSION, config=cfg, inputs=[docs], build=build, run_id=run_id
    )


def _exact_pass(cfg: DedupConfig, src: Path, dropped: IO[str], sink: MetricSink, total: int) -> _FirstPass:
    """Pass 1: drop exact repeats (logging them) and sign every first occurrence."""
    state = _FirstPass()
    fresh = _fresh_batches(cfg, src, state, dropped, sink, total)
    if not cfg.near:
        for _ in fresh:  # exact dedup only: run the pass, sign nothing
            pass
    else:
        hasher = MinHasher(cfg.num_perm, cfg.ngram, np.random.default_rng(cfg.seed))
        workers = cfg.worker_count() if total >= POOL_MIN_DOCS else 1
        state.signatures.extend(_sign_in_order(hasher, fresh, workers))  # (batch, P) each
    state.seen.clear()  # digests are no longer needed; free them before LSH
    return state


def _fresh_batches(
    cfg: DedupConfig, src: Path, state: _FirstPass, dropped: IO[str], sink: MetricSink, total: int
) -> Iterator[list[str]]:
    """Normalized texts of first occurrences, batch by batch; exact repeats are logged as dropped."""
    done = 0
    for ids, texts in iter_doc_batches(src, cfg.batch_docs):
        fresh: list[str] = []
        for doc_id, text in zip(ids, texts, strict=True):
            key_text = dedup_key_text(text)
            digest = hashlib.blake2b(key_text.encode(), digest_size=16).digest()
            if digest in state.seen:
                kept_id = state.unique_ids[state.seen[digest]]
                dropped.write(json.dumps({"id": doc_id, "reason": "exact", "kept_id": kept_id}) + "\n")
                state.unique_of_input.append(-1)
                continue
            state.seen[digest] = len(state.unique_ids)
            state.unique_of_input.append(len(state.unique_ids))
            state.unique_ids.append(doc_id)
            fresh.append(key_text)
        done += len(ids)
        sink.progress(done, total)
        if fresh:
            yield fresh


def _sign_in_order(hasher: MinHasher, batches: Iterator[list[str]], workers: int) -> Iterator[np.ndarray]:
    """Signatures of each batch, in order; computed in ``workers`` processes when more than one.

    At most two batches per worker are in flight, so memory stays bounded however long the
    stream is (``Executor.map`` would submit the whole stream up front). Workers are spawned,
    not forked: the caller may run inside a threaded orchestrator, where fork can deadlock.
    """
    if workers <= 1:
        yield from map(hasher.signatures, batches)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[Future[np.ndarray]] = deque()
        for texts in batches:
            pending.append(pool.submit(hasher.signatures, texts))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _near_duplicates(cfg: DedupConfig, first: _FirstPass) -> tuple[np.ndarray, int]:
    """For each first occurrence, the unique index of its cluster's first document; plus verified pairs."""
    n = len(first.unique_ids)
    if not cfg.near or n < 2:
        return np.arange(n), 0
    sigs = np.concatenate(first.signatures)  # (n, P) uint32
    first.signatures.clear()
    bands, rows = cfg.banding()
    pairs = candidate_pairs(sigs, bands, rows)  # (M, 2)
    verified = _verify(sigs, pairs, cfg.threshold)
    log.info(
        "dedup: %d candidate pairs, %d verified (bands=%d rows=%d)", len(pairs), len(verified), bands, rows
    )
    return cluster_roots(n, verified), len(verified)


def _verify(sigs: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """Keep candidate pairs whose estimated Jaccard similarity reaches ``threshold`` -> (K, 2)."""
    keep = np.zeros(len(pairs), dtype=bool)
    for lo in range(0, len(pairs), _VERIFY_CHUNK):
        chunk = pairs[lo : lo + _VERIFY_CHUNK]
        keep[lo : lo + len(chunk)] = jaccard_estimate(sigs[chunk[:, 0]], sigs[chunk[:, 1]]) >= threshold
    return pairs[keep]


def _write_survivors(
    cfg: DedupConfig, src: Path, out: Path, first: _FirstPass, root: np.ndarray, dropped: IO[str]
) -> int:
    """Pass 2: copy documents that are neither exact nor near duplicates; log the near ones."""
    unique_of_input = np.frombuffer(first.unique_of_input, dtype=np.int64)
    position = 0
    with ShardWriter(out, cfg.shard_docs) as writer:
        for ids, texts in iter_doc_batches(src, cfg.batch_docs):
            for doc_id, text in zip(ids, texts, strict=True):
                u = unique_of_input[position]
                position += 1
                if u < 0:
                    continue
                if root[u] != u:
                    kept_id = first.unique_ids[root[u]]
                    dropped.write(json.dumps({"id": doc_id, "reason": "near", "kept_id": kept_id}) + "\n")
                    continue
                writer.add(doc_id, text)
    return writer.docs


def _report(cfg: DedupConfig, total: int, first: _FirstPass, kept: int, pairs: int) -> dict:
    dropped_exact = total - len(first.unique_ids)
    bands, rows = cfg.banding() if cfg.near else (0, 0)
    return {
        "input": total,
        "kept": kept,
        "dropped_exact": dropped_exact,
        "dropped_near": total - dropped_exact - kept,
        "duplicate_rate": (total - kept) / total if total else 0.0,
        "verified_pairs": pairs,
        "bands": bands,
        "rows": rows,
    }


@task(name="dedup", cache_policy=NO_CACHE)
def dedup_task(cfg: DedupConfig, docs: Artifact, ctx: StageContext) -> Artifact:
    return run_tracked(
        ctx,
        STAGE,
        cfg,
        [docs],
        lambda sink, run_id: dedup(cfg, docs, workdir=ctx.path, sink=sink, run_id=run_id),
        files=["report.json", "dropped.jsonl"],
    )
