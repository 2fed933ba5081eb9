"""Streaming readers: one file of any supported format -> raw documents.

Every reader is a generator over one file, so memory stays bounded by one document (or one
Parquet record batch) whatever the corpus size. Text formats are read as bytes line by line
and decoded per line: UTF-8 never puts a newline byte inside a multi-byte sequence, so this
is exact and lets a decoding error name the line and byte offset where it happened.

Problems are either raised (naming file, line and field) or, when the caller asked to skip,
counted in a ``Counter`` under a drop reason, so every lost document shows up in a summary.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import html
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

Format = Literal["txt", "jsonl", "parquet", "csv", "wiki", "wikitext"]
EncodingErrors = Literal["error", "replace", "skip"]
OnBadRecord = Literal["error", "skip"]
OnBinaryFile = Literal["error", "skip"]

COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst")
_EXTENSION_FORMATS: dict[str, Format] = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tokens": "wikitext",  # wiki.train.tokens (WikiText-2/103)
    ".raw": "wikitext",  # wiki.train.raw (WikiText-*-raw)
}
_WIKI_OPEN = re.compile(r"^<doc\b([^>]*)>\s*$")
_WIKI_ATTR = re.compile(r'(\w+)="([^"]*)"')
# WikiText: an article starts at a " = Title = " line; " = = Section = = " (2+ '=') stays inside it.
_WIKITEXT_TITLE = re.compile(r"= (?!= )(.*?\S) =")
_WIKITEXT_SECTION = re.compile(r"(?:= ){2,}(.*?\S)(?: =){2,}")
_PARQUET_BATCH = 1024
_SNIFF_BYTES = 8192  # head of a file inspected for format tags and NUL bytes


class CorpusFormatError(ValueError):
    """A corpus file cannot be read as its format says; the message names file and line."""


@dataclass(frozen=True)
class RawDoc:
    """A document before cleanup: a stable id (``<source>:<key>``) and its text."""

    id: str
    text: str


@dataclass(frozen=True)
class ReadOptions:
    """How to read files; mirrors the reader-related fields of ``IngestConfig``."""

    text_field: str = "text"
    txt_mode: Literal["blocks", "lines"] = "blocks"
    encoding_errors: EncodingErrors = "error"
    on_bad_record: OnBadRecord = "error"
    wiki_keep_title: bool = False
    csv_delimiter: str = ","
    on_binary_file: OnBinaryFile = "error"


def split_compression(path: Path) -> tuple[str, str]:
    """(format extension, compression suffix) of a name like ``x.jsonl.gz`` -> (".jsonl", ".gz")."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES else ""
    return (suffixes[-1] if suffixes else ""), compression


def open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for reading bytes, transparently decompressing .gz/.bz2/.zst."""
    _, compression = split_compression(path)
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".zst":
        raw = path.open("rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return path.open("rb")


def detect_format(path: Path) -> Format | None:
    """Format from the extension; plain-text and extension-less files are sniffed for
    WikiExtractor ``<doc>`` tags and WikiText `` = Title = `` headings."""
    ext, _ = split_compression(path)
    fmt = _EXTENSION_FORMATS.get(ext)
    if fmt not in (None, "txt"):
        return fmt
    head = _head(path).lstrip()
    if head.startswith(b"<doc ") or head.startswith(b"<doc>"):
        return "wiki"
    first_line = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    if _WIKITEXT_TITLE.fullmatch(first_line):
        return "wikitext"
    return fmt


def _head(path: Path) -> bytes:
    """The first few KiB of a file's (decompressed) content; empty when it cannot be read."""
    try:
        with open_binary(path) as fh:
            return fh.read(_SNIFF_BYTES)
    except (OSError, EOFError, zstandard.ZstdError):
        return b""


def unreadable_reason(path: Path, fmt: Format) -> str | None:
    """'empty_file' for a zero-length file, 'binary_file' for a text format whose head holds NUL
    bytes (an image or archive under a corpus directory), else None.

    Text corpora never contain NUL, so one in the first KiB means decoding the file would only
    produce garbage or a confusing UTF-8 error several megabytes in.
    """
    if path.stat().st_size == 0:
        return "empty_file"
    if fmt != "parquet" and b"\x00" in _head(path):
        return "binary_file"
    return None


def decoded_lines(path: Path, opts: ReadOptions, counts: Counter[str]) -> Iterator[tuple[int, str | None]]:
    """Yield (1-based line number, text without the newline); None for an undecodable line when skipping."""
    offset = 0
    with open_binary(path) as fh:
        try:
            for lineno, raw in enumerate(fh, start=1):
                yield lineno, _decode_line(raw, path, lineno, offset, opts.encoding_errors, counts)
                offset += len(raw)
        except (OSError, EOFError, zstandard.ZstdError) as exc:
            raise CorpusFormatError(f"{path}: cannot decompress/read after byte {offset}: {exc}") from exc


def _decode_line(
    raw: bytes, path: Path, lineno: int, offset: int, errors: EncodingErrors, counts: Counter[str]
) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if errors == "error":
            raise CorpusFormatError(
                f"{path}: line {lineno} (byte offset {offset + exc.start}) is not valid UTF-8: {exc.reason}; "
                "set encoding_errors='replace' or 'skip' to accept such files"
            ) from None
        if errors == "skip":
            return None
        counts["replaced_lines"] += 1
        text = raw.decode("utf-8", errors="replace")
    if lineno == 1:
        text = text.removeprefix("\ufeff")
    return text.rstrip("\r\n")


def read_file(
    path: Path, fmt: Format, source: str, opts: ReadOptions, counts: Counter[str]
) -> Iterator[RawDoc]:
    """All raw documents of one file, in file order.

    A zero-length file yields nothing and is counted under ``empty_file``; a binary file is an
    error naming it, or skipped and counted under ``binary_file`` when ``on_binary_file='skip'``.
    """
    reason = unreadable_reason(path, fmt)
    if reason == "binary_file" and opts.on_binary_file == "error":
        raise CorpusFormatError(
            f"{path}: binary content (NUL bytes in the first {_SNIFF_BYTES} bytes), not a {fmt} file; "
            "remove it from the inputs or set on_binary_file='skip'"
        )
    if reason is not None:
        counts[reason] += 1
        return iter(())
    readers = {
        "txt": _read_txt,
        "jsonl": _read_jsonl,
        "csv": _read_csv,
        "wiki": _read_wiki,
        "wikitext": _read_wikitext,
    }
    if fmt == "parquet":
        return _read_parquet(path, source, opts, counts)
    return readers[fmt](path, source, opts, counts)


def _bad_record(message: str, opts: ReadOptions, counts: Counter[str]) -> None:
    """Raise for a malformed record, or count it when the caller chose to skip such records."""
    if opts.on_bad_record == "error":
        raise CorpusFormatError(message + "; set on_bad_record='skip' to drop such records")
    counts["bad_record"] += 1


def _read_txt(path: Path, source: str, opts: ReadOptions, counts: Counter[str]) -> Iterator[RawDoc]:
    """One document per blank-line-separated block, or per non-blank line in ``lines`` mode."""
    if opts.txt_mode == "lines":
        for lineno, line in decoded_lines(path, opts, counts):
            if line is None:
                counts["encoding"] += 1
            elif line.strip():
                yield RawDoc(f"{source}:{lineno}", line)
        return
    for n, block in enumerate(_blocks(decoded_lines(path, opts, counts))):
        if block is None:
            counts["encoding"] += 1
        else:
            yield RawDoc(f"{source}:{n}", "\n".join(block))


def _blocks(lines: Iterator[tuple[int, str | None]]) -> Iterator[list[str] | None]:
    """Group lines into blank-line-separated blocks; a block holding an undecodable line comes out as None."""
    block: list[str] = []
    broken = False
    for _, line in lines:
        if line is None or line.strip():
            broken |= line is None
            block += [line] if line is not None else []
            continue
        if block or broken:
            yield None if broken else block
        block, broken = [], False
    if block or broken:
        yield None if broken else block


def _read_jsonl(path: Path, source: str, opts: ReadOptions, counts: Counter[str]) -> Iterator[RawDoc]:
    for lineno, line in decoded_lines(path, opts, counts):
        if line is None:
            counts["encoding"] += 1
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad_record(
                f"{path}: line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})", opts, counts
            )
            continue
        text = record.get(opts.text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            _bad_record(f"{path}: line {lineno}: no string field {opts.text_field!r}", opts, counts)
            continue
        yield RawDoc(f"{source}:{lineno}", text)


class _FlaggedLines:
    """Line iterator for ``csv`` that remembers whether an undecodable line went by (skip mode)."""

    def __init__(self, lines: Iterator[tuple[int, str | None]]) -> None:
        self._lines = lines
        self.lineno = 0
        self.broken = False

    def __iter__(self) -> _FlaggedLines:
        return self

    def __next__(self) -> str:
        self.lineno, line = next(self._lines)
        self.broken |= line is None
        return "\n" if line is None else line + "\n"


def _read_csv(path: Path, source: str, opts: ReadOptions, counts: Counter[str]) -> Iterator[RawDoc]:
    """Rows of a CSV with a header; quoted multi-line fields are supported."""
    lines = _FlaggedLines(decoded_lines(path, opts, counts))
    reader = csv.DictReader(lines, delimiter=opts.csv_delimiter)
    try:
        for n, row in enumerate(reader):
            if n == 0 and opts.text_field not in (reader.fieldnames or ()):
                raise CorpusFormatError(
                    f"{path}: header has no column {opts.text_field!r}: {reader.fieldnames}"
                )
            if lines.broken:
                counts["encoding"] += 1
            elif not isinstance(row.get(opts.text_field), str):
                _bad_record(
                    f"{path}: line {lines.lineno}: row has no {opts.text_field!r} value", opts, counts
                )
            else:
                yield RawDoc(f"{source}:{n}", row[opts.text_field])
            lines.broken = False
    except csv.Error as exc:
        raise CorpusFormatError(f"{path}: line {lines.lineno}: malformed CSV: {exc}") from exc


def _read_wiki(path: Path, source: str, opts: ReadOptions, counts: Counter[str]) -> Iterator[RawDoc]:
    """WikiExtractor output: ``<doc id=.. url=.. title=..>`` blocks; the first inner line is the title."""
    attrs: dict[str, str] | None = None
    body: list[str] = []
    broken, start = False, 0
    for lineno, line in decoded_lines(path, opts, counts):
        opened = _WIKI_OPEN.match(line) if line is not None and attrs is None else None
        if opened:
            attrs, body, broken, start = dict(_WIKI_ATTR.findall(opened.group(1))), [], False, lineno
        elif attrs is None:
            if line is None or line.strip():
                _bad_record(f"{path}: line {lineno}: text outside a <doc> block", opts, counts)
        elif line is not None and line.strip() == "</doc>":
            if broken:
                counts["encoding"] += 1
            else:
                yield RawDoc(f"{source}:{attrs.get('id', start)}", _wiki_body(body, attrs, opts))
            attrs = None
        elif line is None:
            broken = True
        else:
            body.append(line)
    if attrs is not None:
        _bad_record(f"{path}: line {start}: <doc> block is never closed by </doc>", opts, counts)


def _wiki_body(body: list[str], attrs: dict[str, str], opts: ReadOptions) -> str:
    """Drop the title line WikiExtractor repeats at the top of each article (unless asked to keep it)."""
    lines = [line for line in body if line.strip()]
    title = html.unescape(attrs.get("title", "")).strip()
    if lines and not opts.wiki_keep_title and html.unescape(lines[0]).strip() == title:
        lines = lines[1:]
    return "\n".join(lines)


def _read_wikitext(path: Path, source: str, opts: ReadOptions, counts: Counter[str]) -> Iterator[RawDoc]:
    """WikiText files: an article runs from one `` = Title = `` line to the next.

    Section headings (`` = = Section = = ``, deeper ones with more '=') stay inside the article
    as a line holding just their text; the title line is kept only with ``wiki_keep_title``.
    Article ``n`` of a file gets the id ``<source>:<n>``.
    """
    body: list[str] = []
    title: str | None = None
    broken, n = False, 0
    for lineno, line in decoded_lines(path, opts, counts):
        heading = _WIKITEXT_TITLE.fullmatch(line.strip()) if line is not None else None
        if heading is None and title is None:
            if line is None or line.strip():
                _bad_record(f"{path}: line {lineno}: text before the first ' = Title = ' line", opts, counts)
            continue
        if heading is None:
            broken |= line is None
            body += [_wikitext_line(line)] if line is not None and line.strip() else []
            continue
        if title is not None:
            yield from _wikitext_article(f"{source}:{n}", title, body, broken, opts, counts)
            n += 1
        title, body, broken = heading.group(1), [], False
    if title is not None:
        yield from _wikitext_article(f"{source}:{n}", title, body, broken, opts, counts)


def _wikitext_line(line: str) -> str:
    section = _WIKITEXT_SECTION.fullmatch(line.strip())
    return section.group(1) if section else line


def _wikitext_article(
    doc_id: str, title: str, body: list[str], broken: bool, opts: ReadOptions, counts: Counter[str]
) -> Iterator[RawDoc]:
    if broken:
        counts["encoding"] += 1
        return
    yield RawDoc(doc_id, "\n".join([title, *body] if opts.wiki_keep_title else body))


def _read_parquet(path: Path, source: str, opts: ReadOptions, counts: Counter[str]) -> Iterator[RawDoc]:
    """Rows of a Parquet file, one record batch at a time."""
    try:
        pfile = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusFormatError(f"{path}: not a readable Parquet file: {exc}") from exc
    with pfile:
        names = pfile.schema_arrow.names
        if opts.text_field not in names:
            raise CorpusFormatError(f"{path}: no column {opts.text_field!r} (columns: {names})")
        row = 0
        for batch in pfile.iter_batches(batch_size=_PARQUET_BATCH, columns=[opts.text_field]):
            for text in batch.column(0).to_pylist():
                if not isinstance(text, str):
                    _bad_record(
                        f"{path}: row {row}: {opts.text_field!r} is {type(text).__name__}", opts, counts
                    )
                else:
                    yield RawDoc(f"{source}:{row}", text)
                row += 1
