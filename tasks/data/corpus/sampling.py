"""Seeded, order-independent choices of documents by their id (the split, the tokenizer's sample)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.data.corpus.shards import read_column, shard_paths, shard_sizes


def unit_hash(salt: str, doc_id: str) -> float:
    """A number in [0, 1) fixed by (salt, id): the same document gets it whatever the corpus order."""
    digest = hashlib.blake2b(f"{salt}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@dataclass(frozen=True)
class ShardSample:
    """The rows of one shard in a sample (None: all of them)."""

    path: Path
    rows: np.ndarray | None


def sample_rows(src: Path, max_docs: int | None, seed: int) -> tuple[list[ShardSample], int]:
    """At most ``max_docs`` documents of a shard directory, chosen by a seeded hash of their ids.

    Every document when ``max_docs`` is None or covers the corpus. Otherwise each document is
    in with probability ``1.02 * max_docs / total`` (the 2 % slack makes a short sample rare)
    and the first ``max_docs`` chosen, in corpus order, are kept: a bounded sample spread over
    the whole corpus, not its first files. Only the ``id`` column is read to choose.
    """
    paths = shard_paths(src)
    sizes = shard_sizes(paths)
    total = sum(sizes)
    if max_docs is None or max_docs >= total:
        return [ShardSample(p, None) for p in paths], total
    share, left = 1.02 * max_docs / total, max_docs
    picked: list[ShardSample] = []
    for path in paths:
        ids = read_column(path, "id")
        rows = np.asarray([k for k, i in enumerate(ids) if unit_hash(f"sample-{seed}", i) < share][:left])
        picked.append(ShardSample(path, rows.astype(np.int64)))
        left -= len(rows)
    return picked, max_docs - left
