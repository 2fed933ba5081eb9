"""Dedup: drop exact duplicates, then near-duplicates found with MinHash-LSH, as shard-mapped steps.

Every step maps over independent items through the job's shard map (``tasks.store.shard_map``:
inline, threads, or a Dask cluster), so memory per item is bounded by one shard, one LSH band
or one chunk of candidate pairs, not by the corpus; the coordinator keeps a few integers per
duplicate and per candidate pair.

1. **sign** (per input shard): each document's normalized text (lowercase, whitespace
   collapsed) is hashed to a 16-byte digest and MinHashed (``num_perm`` uint32), stored
   column-major so that a band reads only its own rows of the file.
2. **exact** (per digest partition): among documents with one digest, the first in corpus
   order is kept; the later ones are exact duplicates of it.
3. **bands** (per LSH band): documents that are not exact duplicates and agree on all rows of
   the band become candidate pairs.
4. **verify** (per chunk of candidate pairs): with ``verify="estimate"`` a pair is kept when
   its estimated Jaccard similarity reaches ``threshold``. With ``verify="exact"`` (the
   default) the estimate only pre-filters (it must reach ``threshold - verify_margin``, so pairs
   truly above the threshold are not lost to estimator noise) and a pair is kept only if the
   EXACT Jaccard similarity of the two documents' shingle sets (their texts read back from
   the shards' row groups) reaches ``threshold``. A 128-permutation estimate has a standard
   deviation of ~0.035 near 0.8, so without this check about one dropped pair in ten is truly
   below the threshold.
5. Going through documents in corpus order, a document is dropped when a kept pair links it to
   an earlier document that survives (which it names as ``kept_id``), so every dropped document
   really is a near-duplicate of a kept one (no transitive chains).
6. **filter** (per input shard): survivors are written, one output shard per input shard.

Which worker ran an item, and when, does not change a byte of the output. Outputs:
``docs-*.parquet`` (same format as ingest), ``report.json`` with counts, and ``dropped.jsonl``
with one line per dropped document (id, reason, kept_id it duplicated), in corpus order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.data.corpus.minhash import (
    MinHasher,
    band_pairs,
    exact_jaccard,
    first_kept_partner,
    jaccard_estimate,
    recall_bands,
    shingle_sets,
)
from tasks.data.corpus.normalize import dedup_key_text
from tasks.data.corpus.shards import (
    ShardWriter,
    iter_shard_batches,
    link_or_copy,
    read_rows,
    shard_paths,
    shard_sizes,
)
from tasks.store.artifact import Artifact
from tasks.store.shard_map import ItemFn
from tasks.store.stage import Job, Stage

log = logging.getLogger(__name__)

VERIFY_PAIRS = 65_536  # candidate pairs per estimate / exact-check item
DOCS_PER_PARTITION = 1_000_000  # documents per exact-digest partition (16 bytes each)


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

    @model_validator(mode="after")
    def _check_bands(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both `bands` and `rows`, or neither (then they follow `threshold`)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def banding(self) -> tuple[int, int]:
        """(bands, rows) as configured, or so LSH keeps ``candidate_recall`` of pairs at ``threshold``."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return recall_bands(self.threshold, self.num_perm, self.candidate_recall)


@dataclass(frozen=True)
class ShardRef:
    """One input shard: its file, the corpus position of its first document, its document count."""

    path: str
    offset: int
    docs: int


@dataclass(frozen=True)
class Signed:
    """The input shards and, per shard, the directory its sign item wrote."""

    shards: tuple[ShardRef, ...]
    dirs: tuple[str, ...]


@dataclass(frozen=True)
class Partition:
    """The documents whose digest is ``index`` modulo ``count``: one exact-dedup item."""

    index: int
    count: int
    signed: Signed


@dataclass(frozen=True)
class Band:
    """Signature rows ``lo:hi`` of every document: one LSH item."""

    lo: int
    hi: int
    signed: Signed
    exact: str  # .npy of the exact duplicates' positions, sorted


@dataclass(frozen=True)
class PairChunk:
    """Pairs ``lo:hi`` of a saved pair array: one estimate or exact-check item."""

    candidates: str  # .npy of the pairs the step checks
    lo: int
    hi: int
    signed: Signed
    shingles: tuple[str, ...] = ()  # per shard, the directory of its shingle sets (exact check)


@dataclass(frozen=True)
class ShardRows:
    """Some documents of one shard: the shingle-set item of the exact check."""

    shard: ShardRef
    rows: np.ndarray  # ascending rows of the shard


@dataclass(frozen=True)
class ShardDrops:
    """What the filter item of one shard drops: (row in shard, reason, kept_id), by row."""

    shard: ShardRef
    drops: tuple[tuple[int, str, str], ...]


def build_dedup(cfg: DedupConfig, docs: Artifact, *, out: Path, job: Job) -> dict:
    """Remove exact and near-duplicate documents from a document-shard artifact."""
    paths = shard_paths(docs.dir)
    sizes = shard_sizes(paths)
    offsets = np.cumsum([0, *sizes]).tolist()
    shards = tuple(ShardRef(str(p), offsets[k], n) for k, (p, n) in enumerate(zip(paths, sizes, strict=True)))
    total = offsets[-1]
    merged = job.scratch / "dedup-merged"  # the coordinator's small arrays
    merged.mkdir(parents=True, exist_ok=True)
    job.map("dedup-sign", partial(_sign_shard, cfg), shards)
    signed = Signed(shards, tuple(str(job.item_dir("dedup-sign", k)) for k in range(len(shards))))
    exact = _exact_duplicates(job, signed, total)  # (E, 2) dup position, first position
    np.save(merged / "exact.npy", exact[:, 0])
    pairs, verify_seconds = _near_pairs(cfg, job, signed, merged / "exact.npy", merged, total - len(exact))
    fates = _fates(exact, _near_drops(pairs.pop("verified")))  # (D, 3) position, reason, kept position
    kept = _write_survivors(cfg, job, shards, fates, out)
    report = _report(cfg, total, len(exact), kept, pairs)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    metrics = {k: float(v) for k, v in report.items() if isinstance(v, int | float)}
    job.sink.log_metrics(metrics | {"verify_seconds": verify_seconds}, step=0)
    log.info(
        "dedup: kept %d of %d (exact %d, near %d)",
        kept,
        total,
        report["dropped_exact"],
        report["dropped_near"],
    )
    return report


def _sign_shard(cfg: DedupConfig, shard: ShardRef, out: Path) -> dict:
    """Digests (docs, 2) uint64 and, for near dedup, signatures (num_perm, docs) uint32 of one shard."""
    hasher = MinHasher(cfg.num_perm, cfg.ngram, np.random.default_rng(cfg.seed)) if cfg.near else None
    digests, signatures = [np.zeros((0, 2), dtype=np.uint64)], [np.zeros((0, cfg.num_perm), dtype=np.uint32)]
    for _, texts in iter_shard_batches(Path(shard.path), cfg.batch_docs):
        keys = [dedup_key_text(t) for t in texts]
        raw = b"".join(hashlib.blake2b(k.encode(), digest_size=16).digest() for k in keys)
        digests.append(np.frombuffer(raw, dtype=np.uint64).reshape(-1, 2))
        if hasher is not None:
            signatures.append(hasher.signatures(keys))
    np.save(out / "digests.npy", np.concatenate(digests))
    if hasher is not None:
        np.save(out / "signatures.npy", np.ascontiguousarray(np.concatenate(signatures).T))
    return {"docs": shard.docs}


def _exact_duplicates(job: Job, signed: Signed, total: int) -> np.ndarray:
    """(E, 2) int64: every exact duplicate's position and its first occurrence's, by position."""
    count = max(1, min(256, math.ceil(total / DOCS_PER_PARTITION)))
    parts = [Partition(i, count, signed) for i in range(count)]
    job.map("dedup-exact", _exact_partition, parts)
    found = [np.load(job.item_dir("dedup-exact", i) / "dups.npy") for i in range(count)]
    dups = np.concatenate([np.zeros((0, 2), dtype=np.int64), *found])
    return dups[np.argsort(dups[:, 0], kind="stable")]


def _exact_partition(part: Partition, out: Path) -> dict:
    """Exact duplicates among the documents whose digest falls in this partition."""
    positions, digests = [np.zeros(0, dtype=np.int64)], [np.zeros((0, 2), dtype=np.uint64)]
    for shard, directory in zip(part.signed.shards, part.signed.dirs, strict=True):
        digest = np.load(Path(directory) / "digests.npy", mmap_mode="r")  # (docs, 2)
        mine = np.flatnonzero(digest[:, 0] % np.uint64(part.count) == np.uint64(part.index))
        positions.append(shard.offset + mine)
        digests.append(np.asarray(digest[mine]))
    pos, dig = np.concatenate(positions), np.concatenate(digests)
    order = np.lexsort((pos, dig[:, 1], dig[:, 0]))  # by digest, then corpus position
    pos, dig = pos[order], dig[order]
    starts_group = np.r_[True, (dig[1:] != dig[:-1]).any(axis=1)] if len(pos) else np.zeros(0, dtype=bool)
    first = pos[np.maximum.accumulate(np.where(starts_group, np.arange(len(pos)), 0))]
    dups = np.stack([pos[~starts_group], first[~starts_group]], axis=1).astype(np.int64)
    np.save(out / "dups.npy", dups)
    return {"dups": len(dups)}


def _near_pairs(
    cfg: DedupConfig, job: Job, signed: Signed, exact: Path, merged: Path, unique: int
) -> tuple[dict, float]:
    """Pair counts and the verified pairs (under "verified"); seconds spent verifying exactly."""
    none = np.zeros((0, 2), dtype=np.int64)
    if not cfg.near or unique < 2:
        return {"candidate_pairs": 0, "checked_pairs": 0, "verified_pairs": 0, "verified": none}, 0.0
    bands, rows = cfg.banding()
    job.map("dedup-bands", _band, [Band(b * rows, (b + 1) * rows, signed, str(exact)) for b in range(bands)])
    found = [np.load(job.item_dir("dedup-bands", b) / "pairs.npy") for b in range(bands)]
    candidates = np.unique(np.concatenate([none, *found]), axis=0)  # (M, 2) positions, i < j
    bound = cfg.threshold - cfg.verify_margin if cfg.verify == "exact" else cfg.threshold
    likely = _mapped_mask(job, "dedup-estimate", partial(_estimate_chunk, bound), candidates, signed, merged)
    checked = candidates[likely]
    start = time.perf_counter()
    verified = _verify_exact(cfg, job, signed, checked, merged) if cfg.verify == "exact" else checked
    seconds = time.perf_counter() - start
    counts = {
        "candidate_pairs": len(candidates),
        "checked_pairs": len(checked),
        "verified_pairs": len(verified),
    }
    log.info("dedup: %s (bands=%d rows=%d verify=%s, %.1f s)", counts, bands, rows, cfg.verify, seconds)
    return counts | {"verified": verified}, seconds


def _mapped_mask(
    job: Job, step: str, fn: ItemFn, pairs: np.ndarray, signed: Signed, merged: Path, shingles: tuple = ()
) -> np.ndarray:
    """``fn`` over chunks of ``pairs`` (mapped); the concatenated boolean masks it saved -> (len(pairs),)."""
    path = merged / f"{step}.npy"
    np.save(path, pairs)
    chunks = [
        PairChunk(str(path), lo, min(lo + VERIFY_PAIRS, len(pairs)), signed, shingles)
        for lo in range(0, len(pairs), VERIFY_PAIRS)
    ]
    job.map(step, fn, chunks)
    masks = [np.load(job.item_dir(step, k) / "keep.npy") for k in range(len(chunks))]
    return np.concatenate([np.zeros(0, dtype=bool), *masks])


def _verify_exact(cfg: DedupConfig, job: Job, signed: Signed, pairs: np.ndarray, merged: Path) -> np.ndarray:
    """The pairs whose exact shingle-set Jaccard reaches ``threshold``.

    Each shard is read once (mapped) for the shingle sets of its documents in ``pairs``; the
    chunks of pairs then compare sets read from those files, so no shard is read per chunk.
    """
    needed = np.unique(pairs)
    work = [ShardRows(signed.shards[k], rows) for k, rows in _by_shard(signed.shards, needed)]
    job.map("dedup-shingles", partial(_shingle_shard, cfg), work)
    at = {w.shard.offset: str(job.item_dir("dedup-shingles", i)) for i, w in enumerate(work)}
    dirs = tuple(at.get(s.offset, "") for s in signed.shards)
    keep = _mapped_mask(
        job, "dedup-verify", partial(_exact_chunk, cfg.threshold), pairs, signed, merged, dirs
    )
    return pairs[keep]


def _band(band: Band, out: Path) -> dict:
    """Candidate pairs of one LSH band, among documents that are not exact duplicates."""
    dup = np.load(band.exact)
    blocks, positions = [np.zeros((band.hi - band.lo, 0), dtype=np.uint32)], [np.zeros(0, dtype=np.int64)]
    for shard, directory in zip(band.signed.shards, band.signed.dirs, strict=True):
        rows = np.load(Path(directory) / "signatures.npy", mmap_mode="r")[band.lo : band.hi]  # (r, docs)
        pos = shard.offset + np.arange(shard.docs, dtype=np.int64)
        keep = ~np.isin(pos, dup, assume_unique=True)
        blocks.append(np.asarray(rows)[:, keep])
        positions.append(pos[keep])
    block, pos = np.concatenate(blocks, axis=1).T, np.concatenate(positions)  # (n, r), (n,)
    pairs = pos[band_pairs(block)] if len(pos) > 1 else np.zeros((0, 2), dtype=np.int64)
    np.save(out / "pairs.npy", pairs.reshape(-1, 2))
    return {"pairs": len(pairs)}


def _estimate_chunk(bound: float, chunk: PairChunk, out: Path) -> dict:
    """Which candidate pairs of the chunk have an estimated Jaccard similarity >= ``bound``."""
    pairs = np.load(chunk.candidates, mmap_mode="r")[chunk.lo : chunk.hi]  # (K, 2)
    docs = np.unique(pairs)  # (D,) positions, ascending
    at = np.searchsorted(docs, pairs)  # (K, 2) index into docs
    sigs = _signatures_at(chunk.signed, docs)  # (D, P)
    keep = jaccard_estimate(sigs[at[:, 0]], sigs[at[:, 1]]) >= bound
    np.save(out / "keep.npy", keep)
    return {"kept": int(keep.sum())}


def _shingle_shard(cfg: DedupConfig, work: ShardRows, out: Path) -> dict:
    """Sorted distinct shingle hashes of the given rows of one shard, flat, with their bounds."""
    texts = read_rows(Path(work.shard.path), work.rows, "text")
    sets = shingle_sets([dedup_key_text(t) for t in texts], cfg.ngram)
    np.save(out / "rows.npy", work.rows)
    np.save(out / "bounds.npy", np.cumsum([0, *map(len, sets)]).astype(np.int64))
    np.save(out / "hashes.npy", np.concatenate([np.zeros(0, dtype=np.uint32), *sets]))
    return {"docs": len(texts)}


def _exact_chunk(threshold: float, chunk: PairChunk, out: Path) -> dict:
    """Which pairs of the chunk have an exact shingle-set Jaccard similarity >= ``threshold``."""
    pairs = np.load(chunk.candidates, mmap_mode="r")[chunk.lo : chunk.hi]  # (K, 2)
    shard_of = _shard_index(chunk.signed.shards, pairs)  # (K, 2)
    files: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for k in np.unique(shard_of).tolist():
        d = Path(chunk.shingles[k])
        files[k] = (
            np.load(d / "rows.npy"),
            np.load(d / "bounds.npy"),
            np.load(d / "hashes.npy", mmap_mode="r"),
        )

    def shingles(position: int, k: int) -> np.ndarray:
        rows, bounds, hashes = files[k]
        i = int(np.searchsorted(rows, position - chunk.signed.shards[k].offset))
        return np.asarray(hashes[bounds[i] : bounds[i + 1]])

    keep = np.zeros(len(pairs), dtype=bool)
    for n, ((a, b), (ka, kb)) in enumerate(zip(pairs.tolist(), shard_of.tolist(), strict=True)):
        keep[n] = exact_jaccard(shingles(a, ka), shingles(b, kb)) >= threshold
    np.save(out / "keep.npy", keep)
    return {"kept": int(keep.sum())}


def _shard_index(shards: tuple[ShardRef, ...], positions: np.ndarray) -> np.ndarray:
    """The index of the shard holding each corpus position (any shape)."""
    offsets = np.asarray([s.offset for s in shards], dtype=np.int64)  # (shards,)
    return np.searchsorted(offsets, positions, side="right") - 1


def _by_shard(shards: tuple[ShardRef, ...], positions: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(shard index, ascending rows in it) for ascending corpus ``positions``."""
    shard_of = _shard_index(shards, positions)
    for k in np.unique(shard_of).tolist():
        yield k, positions[shard_of == k] - shards[k].offset


def _signatures_at(signed: Signed, positions: np.ndarray) -> np.ndarray:
    """Signatures of documents at ascending corpus ``positions`` -> (len(positions), P) uint32."""
    parts = [
        np.asarray(np.load(Path(signed.dirs[k]) / "signatures.npy", mmap_mode="r")[:, rows]).T
        for k, rows in _by_shard(signed.shards, positions)
    ]
    return np.concatenate(parts)


def _near_drops(pairs: np.ndarray) -> np.ndarray:
    """(N, 2) int64: each near duplicate's position and the kept position it duplicates, by position.

    Only the documents in verified pairs are looked at, so this holds a few integers per pair,
    not per corpus document.
    """
    if not len(pairs):
        return np.zeros((0, 2), dtype=np.int64)
    involved, dense = np.unique(pairs, return_inverse=True)  # order-preserving relabelling
    root = first_kept_partner(len(involved), dense.reshape(-1, 2))
    dropped = np.flatnonzero(root != np.arange(len(involved)))
    return np.stack([involved[dropped], involved[root[dropped]]], axis=1)


EXACT, NEAR = 0, 1
REASONS = ("exact", "near")


def _fates(exact: np.ndarray, near: np.ndarray) -> np.ndarray:
    """(D, 3) int64 rows (position, reason, kept position) of every dropped document, by position."""
    rows = np.concatenate(
        [
            np.stack([exact[:, 0], np.full(len(exact), EXACT), exact[:, 1]], axis=1),
            np.stack([near[:, 0], np.full(len(near), NEAR), near[:, 1]], axis=1),
        ]
    ).astype(np.int64)
    return rows[np.argsort(rows[:, 0], kind="stable")]


def _write_survivors(
    cfg: DedupConfig, job: Job, shards: tuple[ShardRef, ...], fates: np.ndarray, out: Path
) -> int:
    """Filter every shard (mapped), then link its survivors and append its dropped lines, in shard order."""
    kept_positions = np.unique(fates[:, 2])
    kept_ids = dict(zip(kept_positions.tolist(), _ids_at(shards, kept_positions), strict=True))
    shard_of = _shard_index(shards, fates[:, 0])
    work = []
    for k, shard in enumerate(shards):
        mine = fates[shard_of == k]
        drops = tuple((int(p) - shard.offset, REASONS[r], kept_ids[int(q)]) for p, r, q in mine.tolist())
        work.append(ShardDrops(shard, drops))
    results = job.map("dedup-filter", partial(_filter_shard, cfg), work)
    with (out / "dropped.jsonl").open("w") as dropped:
        for k, result in enumerate(results):
            done = job.item_dir("dedup-filter", k)
            if result["kept"]:
                link_or_copy(done / "docs-00000.parquet", out / f"docs-{k:05d}.parquet")
            with (done / "dropped.jsonl").open() as lines:
                shutil.copyfileobj(lines, dropped)
    return sum(r["kept"] for r in results)


def _ids_at(shards: tuple[ShardRef, ...], positions: np.ndarray) -> list[str]:
    return [
        i for k, rows in _by_shard(shards, positions) for i in read_rows(Path(shards[k].path), rows, "id")
    ]


def _filter_shard(cfg: DedupConfig, work: ShardDrops, out: Path) -> dict:
    """Copy one shard's survivors to ``docs-00000.parquet`` and log its dropped documents."""
    drops = {row: (reason, kept_id) for row, reason, kept_id in work.drops}
    row = 0
    with ShardWriter(out, max(1, work.shard.docs)) as writer, (out / "dropped.jsonl").open("w") as dropped:
        for ids, texts in iter_shard_batches(Path(work.shard.path), cfg.batch_docs):
            for doc_id, text in zip(ids, texts, strict=True):
                if row in drops:
                    reason, kept_id = drops[row]
                    dropped.write(json.dumps({"id": doc_id, "reason": reason, "kept_id": kept_id}) + "\n")
                else:
                    writer.add(doc_id, text)
                row += 1
    return {"kept": writer.docs}


def _report(cfg: DedupConfig, total: int, dropped_exact: int, kept: int, pairs: dict) -> dict:
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
