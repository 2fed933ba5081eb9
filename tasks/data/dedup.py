"""Dedup: drop exact duplicates, then near-duplicates found with MinHash-LSH.

Two streaming passes over the input shards:

1. Each document's normalized text (lowercase, whitespace collapsed) is hashed; a repeat of
   an earlier hash is an exact duplicate. Documents seen for the first time get a MinHash
   signature (``num_perm`` uint32 each: 512 bytes at 128, the only per-document state kept).
2. LSH bands propose candidate pairs. With ``verify="estimate"`` a pair is kept when its
   estimated Jaccard similarity reaches ``threshold``. With ``verify="exact"`` (the default)
   the estimate only pre-filters (it must reach ``threshold - verify_margin``, so pairs truly
   above the threshold are not lost to estimator noise); the shards are read once more, the
   shingle sets of the documents in surviving pairs are rebuilt and a pair is kept only if its
   EXACT Jaccard similarity reaches ``threshold``. A 128-permutation estimate has a standard
   deviation of ~0.035 near 0.8, so without this check about one dropped pair in ten is truly
   below the threshold. Going through documents in corpus order, a document is dropped when a
   kept pair links it to an earlier document that survives (which it names as ``kept_id``), so
   every dropped document really is a near-duplicate of a kept one (no transitive chains).
   The shards are read again and survivors written out.

Outputs: ``docs-*.parquet`` (same format as ingest), ``report.json`` with counts, and
``dropped.jsonl`` with one line per dropped document (id, reason, kept_id it duplicated).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from array import array
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import IO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.data.corpus.minhash import (
    MinHasher,
    candidate_pairs,
    exact_jaccard,
    first_kept_partner,
    jaccard_estimate,
    recall_bands,
    shingle_sets,
)
from tasks.data.corpus.normalize import dedup_key_text
from tasks.data.corpus.shards import ShardWriter, count_docs, iter_doc_batches
from tasks.sink import MetricSink
from tasks.store.artifact import Artifact
from tasks.store.stage import Job, Stage

log = logging.getLogger(__name__)

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
        0.8, gt=0.0, le=1.0, description="Jaccard similarity of shingle sets that counts as duplicate."
    )
    verify: Literal["exact", "estimate"] = Field(
        "exact",
        description=(
            "How a candidate pair is confirmed: 'exact' compares the two documents' shingle sets "
            "(one more streaming read; precision), 'estimate' trusts the MinHash estimate (faster, "
            "~9% of dropped pairs truly below threshold at 128 permutations)."
        ),
    )
    verify_margin: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "With verify='exact': pairs whose estimate reaches threshold - margin are checked exactly, "
            "so pairs truly above threshold survive estimator noise (0.1 ~ 3 sigma at 128 permutations)."
        ),
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
            "shared 2-core box a 2-process pool was slower under load (102 s vs 92 s, 256k docs), faster "
            "only when the box was quiet (27 s vs 43 s); use None on idle or bigger machines."
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


def build_dedup(cfg: DedupConfig, docs: Artifact, *, out: Path, job: Job) -> dict:
    """Remove exact and near-duplicate documents from a document-shard artifact."""
    sink = job.sink
    total = count_docs(docs.dir)
    with (out / "dropped.jsonl").open("w") as dropped:
        first = _exact_pass(cfg, docs.dir, dropped, sink, total)
        near_root, pairs, verify_seconds = _near_duplicates(cfg, first, docs.dir)
        kept = _write_survivors(cfg, docs.dir, out, first, near_root, dropped)
    report = _report(cfg, total, first, kept, pairs)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    metrics = {k: float(v) for k, v in report.items() if isinstance(v, int | float)}
    sink.log_metrics(metrics | {"verify_seconds": verify_seconds}, step=0)
    log.info(
        "dedup: kept %d of %d (exact %d, near %d)",
        kept,
        total,
        report["dropped_exact"],
        report["dropped_near"],
    )
    return report


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


def _near_duplicates(cfg: DedupConfig, first: _FirstPass, src: Path) -> tuple[np.ndarray, dict, float]:
    """Per first occurrence, the unique index of the kept document it duplicates (or its own);
    pair counts; seconds of exact verification (kept out of the report, which stays deterministic)."""
    n = len(first.unique_ids)
    if not cfg.near or n < 2:
        return np.arange(n), {"candidate_pairs": 0, "checked_pairs": 0, "verified_pairs": 0}, 0.0
    sigs = np.concatenate(first.signatures)  # (n, P) uint32
    first.signatures.clear()
    bands, rows = cfg.banding()
    pairs = candidate_pairs(sigs, bands, rows)  # (M, 2)
    exact = cfg.verify == "exact"
    likely = _filter_by_estimate(sigs, pairs, cfg.threshold - cfg.verify_margin if exact else cfg.threshold)
    del sigs
    start = time.perf_counter()
    verified = _verify_exact(cfg, src, first, likely) if exact and len(likely) else likely
    seconds = time.perf_counter() - start
    counts = {"candidate_pairs": len(pairs), "checked_pairs": len(likely), "verified_pairs": len(verified)}
    log.info("dedup: %s (bands=%d rows=%d verify=%s, %.1f s)", counts, bands, rows, cfg.verify, seconds)
    return first_kept_partner(n, verified), counts, seconds


def _filter_by_estimate(sigs: np.ndarray, pairs: np.ndarray, bound: float) -> np.ndarray:
    """Keep candidate pairs whose estimated Jaccard similarity reaches ``bound`` -> (K, 2)."""
    keep = np.zeros(len(pairs), dtype=bool)
    for lo in range(0, len(pairs), _VERIFY_CHUNK):
        chunk = pairs[lo : lo + _VERIFY_CHUNK]
        keep[lo : lo + len(chunk)] = jaccard_estimate(sigs[chunk[:, 0]], sigs[chunk[:, 1]]) >= bound
    return pairs[keep]


def _verify_exact(cfg: DedupConfig, src: Path, first: _FirstPass, pairs: np.ndarray) -> np.ndarray:
    """Keep pairs (i, j), i < j unique indices, whose exact shingle-set Jaccard reaches ``threshold``.

    Streams the shards once more and rebuilds shingle sets only for documents in ``pairs``.
    A pair is decided when its later document j is read (its earlier one is already held);
    a document's set is freed after its last pair, so memory holds only the documents with
    pairs still open, never the corpus.
    """
    pairs = pairs[np.argsort(pairs[:, 1], kind="stable")]  # (K, 2) in the order pairs close
    last_use = np.full(len(first.unique_ids), -1, dtype=np.int64)  # per document: its last pair's j
    np.maximum.at(last_use, pairs.reshape(-1), np.repeat(pairs[:, 1], 2))
    keep = np.zeros(len(pairs), dtype=bool)
    held: dict[int, np.ndarray] = {}  # unique index -> sorted distinct shingle hashes
    nxt = 0  # next pair to decide
    for u, shingles in _needed_shingle_sets(cfg, src, first, last_use >= 0):
        held[u] = shingles
        while nxt < len(pairs) and pairs[nxt, 1] == u:
            i = int(pairs[nxt, 0])
            keep[nxt] = exact_jaccard(held[i], shingles) >= cfg.threshold
            if last_use[i] == u:
                del held[i]
            nxt += 1
        if last_use[u] == u:
            del held[u]
    return pairs[keep]


def _needed_shingle_sets(
    cfg: DedupConfig, src: Path, first: _FirstPass, needed: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """(unique index, sorted distinct shingle hashes) of each ``needed`` first occurrence, in order."""
    unique_of_input = np.frombuffer(first.unique_of_input, dtype=np.int64)
    position = 0
    for _, texts in iter_doc_batches(src, cfg.batch_docs):
        uniq = unique_of_input[position : position + len(texts)]  # (batch,) unique index or -1
        position += len(texts)
        picked = [k for k, u in enumerate(uniq.tolist()) if u >= 0 and needed[u]]
        if picked:
            sets = shingle_sets([dedup_key_text(texts[k]) for k in picked], cfg.ngram)
            yield from zip((int(uniq[k]) for k in picked), sets, strict=True)


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


def _report(cfg: DedupConfig, total: int, first: _FirstPass, kept: int, pairs: dict) -> dict:
    dropped_exact = total - len(first.unique_ids)
    bands, rows = cfg.banding() if cfg.near else (0, 0)
    return {
        "input": total,
        "kept": kept,
        "dropped_exact": dropped_exact,
        "dropped_near": total - dropped_exact - kept,
        "duplicate_rate": (total - kept) / total if total else 0.0,
        **pairs,
        "bands": bands,
        "rows": rows,
    }


dedup = Stage("dedup", build_dedup, log_files=("report.json", "dropped.jsonl"))
