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
  row; padding appears only in the very last row, so almost no compute is spent on [PAD].
* ``single``: one document per row (``[CLS] doc [SEP] [PAD]...``); a document longer than
  ``seq_len - 2`` tokens is split over several rows, each closed by [SEP].

The train/validation split is by document, decided by a seeded hash of the document id, so
it is deterministic, independent of document order, and never splits one document across
both sides. Rows are streamed to disk batch by batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from itertools import chain
from pathlib import Path
from typing import IO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from tasks.data.corpus.shards import count_docs, iter_doc_batches
from tasks.data.specials import SpecialTokens
from tasks.data.tokenizer import load_tokenizer, tokenizer_family
from tasks.sink import MetricSink
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
    """Encode documents with the tokenizer artifact and write the packed-dir format."""
    sink = job.sink
    tok = load_tokenizer(tokenizer.dir)
    specials = tokenizer_family(tok, str(tokenizer.file("tokenizer.json")))
    tok.no_truncation()
    tok.no_padding()
    vocab_size = tok.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab_size <= 65_535 else np.int32)
    writers = {s: _RowWriter(out / f"{s}.bin", cfg.seq_len, cfg.mode, dtype, specials) for s in SPLITS}
    try:
        _encode_into(cfg, tok, docs.dir, writers, sink)
    finally:
        for writer in writers.values():
            writer.file.close()
    if writers["train"].rows == 0:
        raise ValueError(
            f"pack: no training rows from {docs.dir} (all {writers['validation'].docs} docs held out)"
        )
    meta = _pack_json(cfg, dtype, vocab_size, writers, specials)
    (out / "pack.json").write_text(json.dumps(meta, indent=2))
    summary = _summary(cfg, dtype, vocab_size, writers)
    sink.log_metrics(_metrics(writers), step=0)
    log.info("pack: %s", summary)
    return summary


def _encode_into(
    cfg: PackConfig, tok: Tokenizer, src: Path, writers: dict[str, _RowWriter], sink: MetricSink
) -> None:
    """Encode documents batch by batch (no special tokens) and hand each split its documents."""
    total, done = count_docs(src), 0
    for ids, texts in iter_doc_batches(src, cfg.batch_docs):
        by_split: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
        for doc_id, enc in zip(ids, tok.encode_batch(texts, add_special_tokens=False), strict=True):
            by_split[split_of(doc_id, cfg.seed, cfg.validation_fraction)].append(enc.ids)
        for split, token_lists in by_split.items():
            writers[split].add_batch(token_lists)
        done += len(ids)
        sink.progress(done, total)
    for writer in writers.values():
        writer.finish()


def open_split(directory: Path | str, split: str) -> np.ndarray:
    """Read-only (n_rows, seq_len) view of one split of a packed dir (memory-mapped, nothing loaded)."""
    meta = json.loads((Path(directory) / "pack.json").read_text())
    rows, dtype = meta["splits"][split], np.dtype(meta["dtype"])
    if rows == 0:
        return np.zeros((0, meta["seq_len"]), dtype=dtype)
    return np.memmap(Path(directory) / f"{split}.bin", dtype=dtype, mode="r", shape=(rows, meta["seq_len"]))


def split_of(doc_id: str, seed: int, validation_fraction: float) -> str:
    """'validation' for a seeded-hash share of document ids, else 'train' (order-independent)."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return "validation" if int.from_bytes(digest, "little") / 2**64 < validation_fraction else "train"


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
    cfg: PackConfig, dtype: np.dtype, vocab_size: int, writers: dict[str, _RowWriter], specials: SpecialTokens
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
        "splits": {s: w.rows for s, w in writers.items()},
    }


def _summary(cfg: PackConfig, dtype: np.dtype, vocab_size: int, writers: dict[str, _RowWriter]) -> dict:
    slots = {s: w.rows * cfg.seq_len for s, w in writers.items()}
    return {
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "docs": {s: w.docs for s, w in writers.items()},
        "rows": {s: w.rows for s, w in writers.items()},
        "tokens": {s: slots[s] - w.pads for s, w in writers.items()},
        "padding_fraction": {s: (w.pads / slots[s] if slots[s] else 0.0) for s, w in writers.items()},
    }


def _metrics(writers: dict[str, _RowWriter]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split, w in writers.items():
        metrics |= {f"{split}_docs": w.docs, f"{split}_rows": w.rows, f"{split}_pad_tokens": w.pads}
    return metrics


pack = Stage("pack", build_pack, log_files=("pack.json",))
