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
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tasks.engine.masking import mask_tokens

PACK_FILE = "pack.json"
DTYPES = {"uint16": np.uint16, "int32": np.int32}
SPECIAL_KEYS = ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id")
# Domain tags keep the permutation stream and the mask stream independent even when epoch == step.
_PERMUTATION_STREAM = 0
_MASK_STREAM = 1


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
        """{"pad_id": 0, "unk_id": 1, ...} as written in pack.json."""
        return {key: int(self.meta[key]) for key in SPECIAL_KEYS}

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
    for key in ("dtype", "seq_len", "vocab_size", "splits", *SPECIAL_KEYS):
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
class MLMBatchSource:
    """Deterministic MLM batches over a PackedSequences split: ``batch(step)`` depends only on (seed, step).

    Row order: the stream of rows is epoch 0's permutation, then epoch 1's, ...; batch ``step``
    takes positions [step*B, (step+1)*B) of that stream (a batch may straddle two epochs).
    """

    packed: PackedSequences
    batch_size: int
    seed: int
    mask_rate: float = 0.15
    replace_prob: float = 0.8
    random_prob: float = 0.1
    _permutations: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if len(self.packed) == 0:
            raise PackedDataError(f"{self.packed.dir}: split {self.packed.split!r} has no rows")

    def batch(self, step: int) -> dict[str, Tensor]:
        """input_ids / attention_mask / token_type_ids / labels, each (B, T') with T' <= seq_len."""
        ids = trim_padding(self.packed.take(self.row_indices(step)), self.pad_id)  # (B, T')
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
        )
        return {
            "input_ids": masked,
            "attention_mask": (ids != self.pad_id).long(),
            "token_type_ids": torch.zeros_like(ids),
            "labels": labels,
        }

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


def trim_padding(ids: Tensor, pad_id: int) -> Tensor:
    """Drop trailing columns that are padding in every row: no compute is spent on them."""
    real_columns = (ids != pad_id).any(dim=0).nonzero()  # (k, 1) indices of columns with a real token
    width = int(real_columns.max()) + 1 if real_columns.numel() else 1
    return ids[:, :width]
