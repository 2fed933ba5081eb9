"""Packed token data on disk -> deterministic MLM batches.

``PackedSequences`` memory-maps one split of a packed dir (see the brief's format: pack.json +
``<split>.bin`` of shape (n_rows, seq_len)). ``MLMBatchSource.batch(step)`` is a pure function
of (seed, step): rows come from a per-epoch permutation seeded by (seed, epoch) and the mask from
a generator seeded by (seed, step). A resumed run therefore needs only the step number to see
exactly the batches it would have seen, and each epoch re-masks the same rows differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from models.encoder import document_ids
from tasks.engine.masking import Strategy, mask_tokens

PACK_FILE = "pack.json"
DTYPES = {"uint16": np.uint16, "int32": np.int32}
# pack.json's special-id keys by model family (a pack.json without "family" is BERT's, as before T5)
SPECIAL_KEYS = {
    "bert": ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id"),
    "t5": ("pad_id", "eos_id", "unk_id"),
}
# Domain tags keep the permutation stream and the mask stream independent even when epoch == step.
_PERMUTATION_STREAM = 0
_MASK_STREAM = 1
_PAIR_STREAM = 2


class PackedDataError(ValueError):
    """A packed dir whose metadata or files do not match the documented format."""


class PackedSequences:
    """Read-only (n_rows, seq_len) view of one split of a packed dir, backed by np.memmap."""

    def __init__(self, dir: Path | str, split: str) -> None:
        self.dir = Path(dir)
        self.meta = read_pack_meta(self.dir)
        splits = self.meta["splits"]
        if split not in splits:
            raise PackedDataError(
                f"{self.dir / PACK_FILE}: field 'splits' has no {split!r} (has {sorted(splits)})"
            )
        self.split = split
        self.family: str = self.meta.get("family", "bert")
        self.seq_len: int = self.meta["seq_len"]
        self.vocab_size: int = self.meta["vocab_size"]
        self.num_rows: int = splits[split]
        self.rows = self._open(self.dir / f"{split}.bin", np.dtype(DTYPES[self.meta["dtype"]]))

    def _open(self, path: Path, dtype: np.dtype) -> np.ndarray:
        expected = self.num_rows * self.seq_len * dtype.itemsize
        if not path.is_file():
            raise PackedDataError(f"{path}: missing (pack.json lists {self.num_rows} rows for it)")
        if path.stat().st_size != expected:
            raise PackedDataError(
                f"{path}: {path.stat().st_size} bytes, expected {expected} "
                f"({self.num_rows} rows x {self.seq_len} x {dtype.itemsize} bytes)"
            )
        if self.num_rows == 0:  # np.memmap cannot map an empty file
            return np.zeros((0, self.seq_len), dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(self.num_rows, self.seq_len))

    def __len__(self) -> int:
        return self.num_rows

    @property
    def special_ids(self) -> dict[str, int]:
        """{"pad_id": 0, "unk_id": 1, ...} as written in pack.json (the family's keys)."""
        return {key: int(self.meta[key]) for key in SPECIAL_KEYS[self.family]}

    @property
    def sentinel_ids(self) -> tuple[int, ...]:
        """T5's <extra_id_N> ids in order (empty for BERT)."""
        return tuple(int(i) for i in self.meta.get("sentinel_ids", ()))

    def take(self, indices: np.ndarray) -> Tensor:
        """Rows at ``indices`` as a (len(indices), seq_len) int64 tensor."""
        return torch.from_numpy(np.asarray(self.rows[indices], dtype=np.int64))


def read_pack_meta(dir: Path) -> dict[str, Any]:
    """Parse and validate pack.json."""
    path = dir / PACK_FILE
    if not path.is_file():
        raise PackedDataError(f"{path}: missing; not a packed data directory")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PackedDataError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from err
    family = meta.get("family", "bert")
    if family not in SPECIAL_KEYS:
        raise PackedDataError(f"{path}: field 'family' must be one of {sorted(SPECIAL_KEYS)}, got {family!r}")
    required = ("dtype", "seq_len", "vocab_size", "splits", *SPECIAL_KEYS[family])
    for key in (*required, *(("sentinel_ids",) if family == "t5" else ())):
        if key not in meta:
            raise PackedDataError(f"{path}: missing field {key!r}")
    if meta["dtype"] not in DTYPES:
        raise PackedDataError(f"{path}: field 'dtype' must be one of {sorted(DTYPES)}, got {meta['dtype']!r}")
    for key in ("seq_len", "vocab_size"):
        if not isinstance(meta[key], int) or meta[key] < 1:
            raise PackedDataError(f"{path}: field {key!r} must be a positive integer, got {meta[key]!r}")
    return meta


def seeded_generator(*words: int) -> torch.Generator:
    """A CPU torch.Generator whose seed is a well-mixed hash of ``words`` (no global RNG involved)."""
    seed = int(np.random.SeedSequence(list(words)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


@dataclass
class RowStream:
    """Which rows batch ``step`` holds, as a pure function of (seed, step).

    Row order: the stream of rows is epoch 0's permutation, then epoch 1's, ...; batch ``step``
    takes positions [step*B, (step+1)*B) of that stream (a batch may straddle two epochs).
    Subclasses turn the rows into an objective's batch.
    """

    packed: PackedSequences
    batch_size: int
    seed: int
    _permutations: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if len(self.packed) == 0:
            raise PackedDataError(f"{self.packed.dir}: split {self.packed.split!r} has no rows")

    def require_family(self, family: str, needs: str, fix: str) -> None:
        """Refuse a split packed for the other model family, naming what is missing and the fix."""
        if self.packed.family != family:
            raise PackedDataError(
                f"{self.packed.dir}: {needs}, but pack.json's family is {self.packed.family!r} ({fix})"
            )

    @property
    def pad_id(self) -> int:
        return self.packed.special_ids["pad_id"]

    @property
    def steps_per_epoch(self) -> float:
        return len(self.packed) / self.batch_size

    def row_indices(self, step: int) -> np.ndarray:
        """Row ids of batch ``step``: a window of the concatenated per-epoch permutations."""
        n = len(self.packed)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)  # (B,)
        epochs, offsets = np.divmod(positions, n)
        rows = np.empty_like(positions)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            rows[here] = self.permutation(int(epoch))[offsets[here]]
        return rows

    def permutation(self, epoch: int) -> np.ndarray:
        """Row order of one epoch; the last two are cached (a batch touches at most two epochs)."""
        if epoch not in self._permutations:
            rng = np.random.default_rng([self.seed, _PERMUTATION_STREAM, epoch])
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = rng.permutation(len(self.packed))
        return self._permutations[epoch]


@dataclass
class MLMBatchSource(RowStream):
    """Deterministic MLM batches over a PackedSequences split: ``batch(step)`` depends only on (seed, step).

    Rows as in RowStream; the mask comes from a generator seeded by (seed, step).
    ``strategy`` picks token / whole-word / span masking (see masking.py; word and span need the
    ``is_continuation`` lookup); ``with_doc_ids`` adds the (B, T) document index per token that
    the encoder's ``doc_attention`` uses.
    """

    mask_rate: float = 0.15
    replace_prob: float = 0.8
    random_prob: float = 0.1
    strategy: Strategy = "token"
    is_continuation: Tensor | None = None
    span_p: float = 0.2
    span_max: int = 10
    with_doc_ids: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_family(
            "bert", "masked-LM batches need BERT's special tokens",
            f"pre-train it with pretrain.family = {self.packed.family!r}",
        )  # fmt: skip
        if self.strategy in ("word", "span") and self.is_continuation is None:
            raise ValueError(f"{self.strategy} masking needs the tokenizer's is_continuation lookup")

    def batch(self, step: int) -> dict[str, Tensor]:
        """input_ids / attention_mask / token_type_ids / labels (+ doc_ids), each (B, T'), T' <= seq_len."""
        ids = trim_padding(self.packed.take(self.row_indices(step)), self.pad_id)  # (B, T')
        return self.masked_batch(ids, torch.zeros_like(ids), step)

    def masked_batch(self, ids: Tensor, token_type_ids: Tensor, step: int) -> dict[str, Tensor]:
        """Mask ``ids`` (B, T) with the (seed, step) mask stream and assemble the batch dict."""
        special = self.packed.special_ids
        masked, labels = mask_tokens(
            ids,
            generator=seeded_generator(self.seed, _MASK_STREAM, step),
            mask_rate=self.mask_rate,
            mask_id=special["mask_id"],
            vocab_size=self.packed.vocab_size,
            special_ids=special.values(),
            replace_prob=self.replace_prob,
            random_prob=self.random_prob,
            strategy=self.strategy,
            is_continuation=self.is_continuation,
            span_p=self.span_p,
            span_max=self.span_max,
        )
        attention_mask = (ids != self.pad_id).long()
        batch = {
            "input_ids": masked,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "labels": labels,
        }
        if self.with_doc_ids:
            batch["doc_ids"] = document_ids(ids, special["sep_id"], attention_mask)
        return batch


def trim_padding(ids: Tensor, pad_id: int) -> Tensor:
    """Drop trailing columns that are padding in every row: no compute is spent on them."""
    real_columns = (ids != pad_id).any(dim=0).nonzero()  # (k, 1) indices of columns with a real token
    width = int(real_columns.max()) + 1 if real_columns.numel() else 1
    return ids[:, :width]


@dataclass
class PairBatchSource(MLMBatchSource):
    """Sentence-pair batches for NSP / SOP on top of MLM, built from packed rows (B, T).

    Each row [CLS] d1 [SEP] d2 [SEP] ... is cut inside one of its documents (one with >= 2
    tokens, chosen at random, at a random point) into A (everything before the cut) and B
    (everything after); the row becomes [CLS] A [SEP] B [SEP] with token types 0 then 1.
    Cutting inside a document, not at an existing [SEP], is what makes the pair task about
    coherence: A's end and B's start are consecutive text of one document. SOP (ALBERT) swaps
    A and B for label 1; NSP (BERT) replaces B by the tail of another random row for label 1.
    The inserted [SEP] costs one slot: a full row loses its last token.
    """

    task: Literal["sop", "nsp"] = "sop"

    def batch(self, step: int) -> dict[str, Tensor]:
        rows = self.packed.take(self.row_indices(step)).numpy()  # (B, seq_len)
        generator = seeded_generator(self.seed, _PAIR_STREAM, step)
        built = [self.pair_row(row, generator) for row in rows]
        ids = torch.tensor(np.stack([b[0] for b in built]))  # (B, seq_len)
        types = torch.tensor(np.stack([b[1] for b in built]))
        width = trim_padding(ids, self.pad_id).size(1)
        batch = self.masked_batch(ids[:, :width], types[:, :width], step)
        batch["pair_labels"] = torch.tensor([b[2] for b in built], dtype=torch.long)  # (B,)
        return batch

    def pair_row(self, row: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids (T,), token types (T,), label) for one packed row."""
        first, second = split_segments(row_content(row, self.pad_id, self.packed.special_ids["cls_id"]),
                                       self.packed.special_ids["sep_id"], generator)  # fmt: skip
        label = int(torch.randint(2, (1,), generator=generator))
        if label and self.task == "sop":
            first, second = second, first
        elif label:  # nsp: B from another row, starting at a random point
            other = int(torch.randint(len(self.packed), (1,), generator=generator))
            content = row_content(self.packed.take(np.array([other])).numpy()[0], self.pad_id, 2)
            start = int(torch.randint(max(len(content) - 1, 1), (1,), generator=generator))
            second = content[start:]
        ids, types = assemble_pair(first, second, len(row), self.packed.special_ids, self.pad_id)
        return ids, types, label


def row_content(row: np.ndarray, pad_id: int, cls_id: int) -> np.ndarray:
    """A packed row without its leading [CLS] and trailing padding."""
    real = row[row != pad_id]
    return real[1:] if len(real) and real[0] == cls_id else real


def split_segments(
    content: np.ndarray, sep_id: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``content`` inside a random document of >= 2 tokens: (A, B), A without a closing [SEP]."""
    seps = np.flatnonzero(content == sep_id)
    begins = np.concatenate([[0], seps + 1])[: len(seps) + 1]
    ends = np.concatenate([seps, [len(content)]])  # exclusive, the [SEP] itself excluded
    splittable = np.flatnonzero(ends - begins >= 2)
    if len(splittable) == 0:  # nothing to cut inside: an (almost) empty row
        cut = min(1, len(content))
    else:
        doc = int(splittable[int(torch.randint(len(splittable), (1,), generator=generator))])
        cut = (
            int(begins[doc])
            + 1
            + int(torch.randint(int(ends[doc] - begins[doc]) - 1, (1,), generator=generator))
        )
    return content[:cut], content[cut:]


def assemble_pair(
    first: np.ndarray, second: np.ndarray, width: int, special: dict[str, int], pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] first [SEP] second [SEP] [PAD]* of length ``width``, token types 0 then 1.

    Each segment is closed by a [SEP] (inner [SEP]s, which end packed documents, stay); what does
    not fit is cut from the end of ``second`` (or of ``first`` when it alone fills the row).
    """
    first = closed(first, special["sep_id"], width - 2)  # leaves room for second's [SEP]
    second = closed(second, special["sep_id"], width - 1 - len(first))
    pieces = np.concatenate([[special["cls_id"]], first, second])  # (<= width,)
    ids = np.full(width, pad_id, dtype=np.int64)
    types = np.zeros(width, dtype=np.int64)
    ids[: len(pieces)] = pieces
    types[1 + len(first) : len(pieces)] = 1
    return ids, types


def closed(segment: np.ndarray, sep_id: int, limit: int) -> np.ndarray:
    """``segment`` ending in [SEP] and at most ``limit`` long (cut at the end, [SEP] kept last)."""
    if not len(segment) or segment[-1] != sep_id:
        segment = np.append(segment, sep_id)
    if len(segment) > limit:
        segment = np.append(segment[: limit - 1], sep_id)
    return segment
