"""Pack: tokenize document shards into fixed-length rows of token ids, memory-mappable.

Output (the packed-dir format): ``pack.json`` plus ``train.bin`` and ``validation.bin``, raw
C-order arrays of shape (n_rows, seq_len), uint16 when the vocabulary fits, else int32.
For a BERT-family tokenizer every row starts with [CLS], every document inside a row ends with
[SEP] and the tail is [PAD]; a T5-family tokenizer's rows start with text, each document ends
with </s> and the tail is <pad> (span corruption later cuts its inputs and targets from a row,
so ``seq_len`` is then the raw row length, e.g. 141 tokens for 128 encoder inputs). pack.json
names the family and its special ids (and T5's sentinel ids): the engine reads them there.

* ``pack``: documents are concatenated (``doc [SEP] doc [SEP] ...``) and cut every
  ``seq_len - 1`` tokens, each row prefixed with [CLS]. A document may continue into the next
  row; padding appears only in the last row of each document shard (shards are packed
  independently, see ``build_pack``), so almost no compute is spent on [PAD].
* ``single``: one document per row (``[CLS] doc [SEP] [PAD]...``); a document longer than
  ``seq_len - 2`` tokens is split over several rows, each closed by [SEP].

The train/validation split is by document, decided by a seeded hash of the document id, so
it is deterministic, independent of document order, and never splits one document across
both sides. Rows are streamed to disk batch by batch.
"""

from __future__ import annotations

import json
import logging
import shutil
from functools import partial
from itertools import chain
from pathlib import Path
from typing import IO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tasks.data.corpus.sampling import unit_hash
from tasks.data.corpus.shards import iter_shard_batches, shard_paths
from tasks.data.specials import SpecialTokens
from tasks.data.tokenizer import load_tokenizer, tokenizer_family
from tasks.store.artifact import Artifact
from tasks.store.stage import Job, Stage

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")


class PackConfig(BaseModel):
    """Row length, packing mode and the held-out share of documents."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq_len: int = Field(128, ge=8, le=65_536, description="Tokens per row, [CLS]/[SEP]/[PAD] included.")
    mode: Literal["pack", "single"] = Field(
        "pack",
        description="pack: several documents per row separated by [SEP]; single: one document per row.",
    )
    validation_fraction: float = Field(
        0.01, ge=0.0, lt=1.0, description="Share of documents held out for validation (chosen by id hash)."
    )
    seed: int = Field(0, ge=0, description="Seed of the id hash that assigns documents to splits.")
    batch_docs: int = Field(1000, ge=1, le=1_000_000, description="Documents encoded per encode_batch call.")


def build_pack(cfg: PackConfig, docs: Artifact, tokenizer: Artifact, *, out: Path, job: Job) -> dict:
    """Encode documents with the tokenizer artifact and write the packed-dir format.

    Each document shard is an item of the job's shard map: it writes its own rows, its last
    (pack-mode) row padded, and the rows are concatenated in shard order, so the output does
    not depend on who encoded which shard.
    """
    tok = load_tokenizer(tokenizer.dir)
    specials = tokenizer_family(tok, str(tokenizer.file("tokenizer.json")))
    vocab_size = tok.get_vocab_size()
    paths = shard_paths(docs.dir)
    if not paths:
        raise FileNotFoundError(f"no document shards in {docs.dir}")
    counts = job.map("pack-encode", partial(_pack_shard, cfg, str(tokenizer.dir)), [str(p) for p in paths])
    totals = {s: {k: sum(c[s][k] for c in counts) for k in ("docs", "rows", "pads")} for s in SPLITS}
    for split in SPLITS:
        with (out / f"{split}.bin").open("wb") as joined:
            for k in range(len(paths)):
                with (job.item_dir("pack-encode", k) / f"{split}.bin").open("rb") as part:
                    shutil.copyfileobj(part, joined, 2**22)
    if totals["train"]["rows"] == 0:
        raise ValueError(
            f"pack: no training rows from {docs.dir} (all {totals['validation']['docs']} docs held out)"
        )
    dtype = _dtype(vocab_size)
    (out / "pack.json").write_text(json.dumps(_pack_json(cfg, dtype, vocab_size, totals, specials), indent=2))
    summary = _summary(cfg, dtype, vocab_size, totals)
    job.sink.log_metrics(_metrics(totals), step=0)
    log.info("pack: %s", summary)
    return summary


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65_535 else np.int32)


def _pack_shard(cfg: PackConfig, tokenizer_dir: str, shard: str, out: Path) -> dict:
    """Rows of one document shard, per split, in ``out/<split>.bin``; their counts."""
    tok = load_tokenizer(tokenizer_dir)
    specials = tokenizer_family(tok, tokenizer_dir)
    tok.no_truncation()
    tok.no_padding()
    dtype = _dtype(tok.get_vocab_size())
    writers = {s: _RowWriter(out / f"{s}.bin", cfg.seq_len, cfg.mode, dtype, specials) for s in SPLITS}
    try:
        for ids, texts in iter_shard_batches(Path(shard), cfg.batch_docs):
            by_split: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
            for doc_id, enc in zip(ids, tok.encode_batch(texts, add_special_tokens=False), strict=True):
                by_split[split_of(doc_id, cfg.seed, cfg.validation_fraction)].append(enc.ids)
            for split, token_lists in by_split.items():
                writers[split].add_batch(token_lists)
        for writer in writers.values():
            writer.finish()
    finally:
        for writer in writers.values():
            writer.file.close()
    return {s: {"docs": w.docs, "rows": w.rows, "pads": w.pads} for s, w in writers.items()}


def open_split(directory: Path | str, split: str) -> np.ndarray:
    """Read-only (n_rows, seq_len) view of one split of a packed dir (memory-mapped, nothing loaded)."""
    meta = json.loads((Path(directory) / "pack.json").read_text())
    rows, dtype = meta["splits"][split], np.dtype(meta["dtype"])
    if rows == 0:
        return np.zeros((0, meta["seq_len"]), dtype=dtype)
    return np.memmap(Path(directory) / f"{split}.bin", dtype=dtype, mode="r", shape=(rows, meta["seq_len"]))


def split_of(doc_id: str, seed: int, validation_fraction: float) -> str:
    """'validation' for a seeded-hash share of document ids, else 'train' (order-independent)."""
    return "validation" if unit_hash(str(seed), doc_id) < validation_fraction else "train"


class _RowWriter:
    """Turns one split's documents into fixed-length rows and appends them to its .bin file."""

    def __init__(self, path: Path, seq_len: int, mode: str, dtype: np.dtype, specials: SpecialTokens) -> None:
        self.seq_len, self.mode, self.dtype = seq_len, mode, dtype
        self.prefix, self.separator = specials.row_prefix, specials.separator
        self.pad_id = specials.ids["pad_id"]
        self.head = int(self.prefix is not None)  # tokens before a row's body
        self.file: IO[bytes] = path.open("wb")
        self.carry = np.zeros(0, dtype=np.int64)  # pack mode: tokens not yet in a full row
        self.docs = self.rows = self.pads = 0

    def add_batch(self, docs: list[list[int]]) -> None:
        """Queue documents' ids (without special tokens); empty documents are ignored."""
        docs = [d for d in docs if d]
        self.docs += len(docs)
        if self.mode == "single":
            for token_ids in docs:
                self._single(token_ids)
            return
        size = sum(len(d) + 1 for d in docs)
        stream = np.fromiter(
            chain.from_iterable(chain(d, (self.separator,)) for d in docs), dtype=np.int64, count=size
        )
        self.carry = np.concatenate([self.carry, stream])  # (carry + size,) doc [SEP] doc [SEP] ...
        body = self.seq_len - self.head
        n_full = self.carry.size // body
        if n_full:
            self._write(self.carry[: n_full * body].reshape(n_full, body), closing=None)
            self.carry = self.carry[n_full * body :]

    def _single(self, token_ids: list[int]) -> None:
        body = self.seq_len - self.head - 1
        ids = np.asarray(token_ids, dtype=np.int64)
        for lo in range(0, ids.size, body):
            self._write(ids[None, lo : lo + body], closing=self.separator)

    def _write(self, bodies: np.ndarray, closing: int | None) -> None:
        """Write rows ``[prefix] body [closing] [PAD]...`` for a (n, <= seq_len - head) block of bodies."""
        n, width = bodies.shape
        rows = np.full((n, self.seq_len), self.pad_id, dtype=self.dtype)  # (n, seq_len)
        if self.prefix is not None:
            rows[:, 0] = self.prefix
        rows[:, self.head : self.head + width] = bodies
        if closing is not None:
            rows[:, self.head + width] = closing
        self.pads += self.seq_len * n - (self.head + width + (closing is not None)) * n
        self.rows += n
        rows.tofile(self.file)

    def finish(self) -> None:
        """Write the last, partial row (pack mode); the file is closed by the caller."""
        if self.carry.size:
            self._write(self.carry[None, :], closing=None)
            self.carry = self.carry[:0]


def _pack_json(
    cfg: PackConfig,
    dtype: np.dtype,
    vocab_size: int,
    totals: dict[str, dict[str, int]],
    specials: SpecialTokens,
) -> dict:
    sentinels = {"sentinel_ids": specials.sentinel_ids} if specials.sentinels else {}
    return {
        "dtype": dtype.name,
        "seq_len": cfg.seq_len,
        "vocab_size": vocab_size,
        "family": specials.family,
        **specials.ids,
        **sentinels,
        "mode": cfg.mode,
        "splits": {s: t["rows"] for s, t in totals.items()},
    }


def _summary(cfg: PackConfig, dtype: np.dtype, vocab_size: int, totals: dict[str, dict[str, int]]) -> dict:
    slots = {s: t["rows"] * cfg.seq_len for s, t in totals.items()}
    return {
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "docs": {s: t["docs"] for s, t in totals.items()},
        "rows": {s: t["rows"] for s, t in totals.items()},
        "tokens": {s: slots[s] - t["pads"] for s, t in totals.items()},
        "padding_fraction": {s: (t["pads"] / slots[s] if slots[s] else 0.0) for s, t in totals.items()},
    }


def _metrics(totals: dict[str, dict[str, int]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split, t in totals.items():
        metrics |= {f"{split}_docs": t["docs"], f"{split}_rows": t["rows"], f"{split}_pad_tokens": t["pads"]}
    return metrics


pack = Stage("pack", build_pack, log_files=("pack.json",))
