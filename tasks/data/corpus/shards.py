"""The document-shard format stages exchange: ``docs-00000.parquet``, ... with ``id`` and ``text``.

Writers stream row groups and readers yield record batches, so neither side ever holds
more than a few thousand documents, whatever the shard or corpus size.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARD_GLOB = "docs-*.parquet"
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


def shard_paths(directory: Path) -> list[Path]:
    """The document shards of a stage directory, in order."""
    return sorted(Path(directory).glob(SHARD_GLOB))


def iter_doc_batches(directory: Path, batch_size: int = 1024) -> Iterator[tuple[list[str], list[str]]]:
    """Yield (ids, texts) batches over all shards of ``directory``, in document order."""
    paths = shard_paths(directory)
    if not paths:
        raise FileNotFoundError(f"no document shards ({SHARD_GLOB}) in {directory}")
    for path in paths:
        yield from iter_shard_batches(path, batch_size)


def iter_shard_batches(path: Path, batch_size: int = 1024) -> Iterator[tuple[list[str], list[str]]]:
    """Yield (ids, texts) batches of one shard file, in document order."""
    with pq.ParquetFile(path) as pfile:
        for batch in pfile.iter_batches(batch_size=batch_size, columns=["id", "text"]):
            yield batch.column(0).to_pylist(), batch.column(1).to_pylist()


def shard_sizes(paths: list[Path]) -> list[int]:
    """Documents per shard, from the footers."""
    return [pq.ParquetFile(p).metadata.num_rows for p in paths]


def read_column(path: Path, column: str) -> list[str]:
    """One column of a shard, whole (ids are small; texts are read by row group, see ``read_rows``)."""
    return pq.read_table(path, columns=[column]).column(0).to_pylist()


def read_rows(path: Path, rows: np.ndarray, column: str) -> list[str]:
    """``column`` at the ascending, distinct ``rows`` of one shard, read from the row groups holding them."""
    with pq.ParquetFile(path) as pfile:
        sizes = [pfile.metadata.row_group(g).num_rows for g in range(pfile.num_row_groups)]
        starts = np.cumsum([0, *sizes])  # (groups + 1,) first row of each row group
        group_of = np.searchsorted(starts, rows, side="right") - 1  # (len(rows),)
        values: list[str] = []
        for group in np.unique(group_of).tolist():
            local = rows[group_of == group] - starts[group]
            column_data = pfile.read_row_group(group, columns=[column]).column(0)
            values += column_data.take(pa.array(local)).to_pylist()
    return values


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (a cached shard-map item keeps its file), or a copy where links are not possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def copy_head(src: Path, dst: Path, docs: int) -> tuple[int, int]:
    """Write the first ``docs`` documents of shard ``src`` as shard ``dst``: (documents, characters)."""
    staging = dst.with_name(f".tmp-{dst.name}")
    staging.mkdir()
    with ShardWriter(staging, max(1, docs)) as writer:
        for ids, texts in iter_shard_batches(src):
            for doc_id, text in zip(ids, texts, strict=True):
                if writer.docs == docs:
                    break
                writer.add(doc_id, text)
    os.replace(staging / "docs-00000.parquet", dst)
    staging.rmdir()
    return writer.docs, writer.chars


class ShardWriter:
    """Streams documents into zstd-compressed Parquet shards of ``shard_docs`` documents each.

    Documents are written as row groups of at most ``row_group_docs``, so memory is bounded by
    one row group however large a shard is, and readers can stream a shard group by group.
    """

    def __init__(self, directory: Path, shard_docs: int, row_group_docs: int = 8192) -> None:
        self.directory = Path(directory)
        self.shard_docs = shard_docs
        self.row_group_docs = min(row_group_docs, shard_docs)
        self.shards = 0  # finished shard files
        self.docs = 0
        self.chars = 0
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0  # documents already in the open shard
        self._shard_chars = 0
        self.shard_sizes: list[tuple[int, int]] = []  # (documents, characters) of each finished shard

    def add(self, doc_id: str, text: str) -> None:
        self._ids.append(doc_id)
        self._texts.append(text)
        self.docs += 1
        self.chars += len(text)
        if len(self._ids) >= self.row_group_docs or self._in_shard + len(self._ids) >= self.shard_docs:
            self._write_group()

    def _write_group(self) -> None:
        """Append buffered documents to the open shard as one row group; close the shard when full."""
        if not self._ids:
            return
        if self._writer is None:
            path = self.directory / f"docs-{self.shards:05d}.parquet"
            self._writer = pq.ParquetWriter(path, SCHEMA, compression="zstd")
        self._writer.write_table(pa.table({"id": self._ids, "text": self._texts}, schema=SCHEMA))
        self._in_shard += len(self._ids)
        self._shard_chars += sum(map(len, self._texts))
        self._ids, self._texts = [], []
        if self._in_shard >= self.shard_docs:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.shards += 1
            self.shard_sizes.append((self._in_shard, self._shard_chars))
            self._in_shard = self._shard_chars = 0

    def close(self) -> None:
        """Write what is buffered and finish the last shard."""
        self._write_group()
        self._close_shard()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()  # release the file; the stage's temp dir is discarded anyway
