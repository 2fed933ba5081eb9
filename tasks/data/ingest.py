"""Ingest: local files (txt/jsonl/parquet/csv/WikiExtractor/WikiText, plain or compressed) or a
Hugging Face dataset -> cleaned, filtered document shards.

Input files are read in groups of about ``group_bytes``, each group an independent item of the
job's shard map (``tasks.store.shard_map``: inline, threads or a Dask cluster). Inside a group,
documents stream from the readers through cleanup and filters into Parquet shards of
``shard_docs`` documents, so memory does not grow with the corpus; the groups' shards keep the
files' order (``docs-<group>-<shard>.parquet``). Every dropped document is
counted under a reason (filter, bad record, bad encoding) in the summary, and every input file
that yielded nothing because it was empty or binary under ``skipped_files``.

The fingerprint covers the config AND the resolved input files (absolute path and a sampled
content digest, see ``tasks.store.digest``): editing a corpus file or running from another
directory builds a new artifact instead of silently reusing a stale one.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.data.corpus.normalize import DocFilter, clean_text
from tasks.data.corpus.readers import (
    CorpusFormatError,
    Format,
    RawDoc,
    ReadOptions,
    detect_format,
    read_file,
    split_compression,
)
from tasks.data.corpus.shards import ShardWriter, copy_head, link_or_copy
from tasks.store.stage import Job, Stage

log = logging.getLogger(__name__)


class IngestConfig(BaseModel):
    """Where the corpus comes from and which documents are kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    paths: tuple[str, ...] = Field(
        (),
        description="Files, directories (read recursively) or globs; relative ones resolve against the cwd.",
    )
    format: Literal["auto", "txt", "jsonl", "parquet", "csv", "wiki", "wikitext"] = Field(
        "auto",
        description=(
            "File format; 'auto' uses the extension (.gz/.bz2/.zst stripped; .tokens/.raw = wikitext) "
            "and sniffs WikiExtractor <doc> tags and WikiText ' = Title = ' headings."
        ),
    )
    text_field: str = Field(
        "text", min_length=1, description="Field/column holding the text (jsonl, parquet, csv, HF)."
    )
    txt_mode: Literal["blocks", "lines"] = Field(
        "blocks", description="Plain text: one document per blank-line-separated block, or per line."
    )
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field delimiter.")
    wiki_keep_title: bool = Field(
        False, description="WikiExtractor/WikiText: keep the title line at the top of each article."
    )
    hf_dataset: str | None = Field(None, description="Hugging Face dataset name, streamed (needs network).")
    hf_config: str | None = Field(None, description="Hugging Face dataset configuration name.")
    hf_split: str = Field("train", min_length=1, description="Hugging Face dataset split.")
    encoding_errors: Literal["error", "replace", "skip"] = Field(
        "error",
        description="Invalid UTF-8: raise naming file/line/offset, replace by U+FFFD, or skip the document.",
    )
    on_bad_record: Literal["error", "skip"] = Field(
        "error",
        description="Malformed record (bad JSON, missing field): raise naming file+line, or skip and count.",
    )
    on_binary_file: Literal["error", "skip"] = Field(
        "error",
        description="A text-format file with NUL bytes: raise naming it, or skip it and count it.",
    )
    min_chars: int = Field(20, ge=0, le=10_000_000, description="Drop cleaned documents shorter than this.")
    max_chars: int = Field(
        1_000_000, ge=1, le=1_000_000_000, description="Drop cleaned documents longer than this."
    )
    min_alpha_fraction: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Drop documents whose share of letters among non-space chars is lower.",
    )
    max_repeated_line_fraction: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Drop documents where more than this share of lines repeat an earlier line (1.0: off).",
    )
    shard_docs: int = Field(50_000, ge=1, le=10_000_000, description="Documents per output Parquet shard.")
    group_bytes: int = Field(
        32 * 2**20,
        ge=1,
        description=(
            "Input files are read in groups of about this many bytes, one shard-mapped item per group "
            "(a bigger file is a group of its own): the unit of parallelism, retry and reuse."
        ),
    )
    max_docs: int | None = Field(None, ge=1, description="Stop after this many kept documents (None: all).")

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        if not self.paths and not self.hf_dataset:
            raise ValueError("IngestConfig needs `paths` (files, dirs or globs) or `hf_dataset`")
        if self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars})")
        return self


@dataclass(frozen=True)
class InputFile:
    """One resolved corpus file: where it is, its name inside document ids, and its format."""

    path: Path
    source: str
    format: Format


def corpus_files(cfg: IngestConfig, workdir: Path) -> list[Path]:
    """The corpus files ingest reads (their sampled content digests go into the fingerprint)."""
    return [f.path for f in resolve_inputs(cfg.paths, cfg.format, Path.cwd(), exclude=workdir)]


@dataclass(frozen=True)
class FileGroup:
    """The input files one ingest item reads (or, with ``hub``, the Hugging Face dataset)."""

    files: tuple[InputFile, ...]
    hub: bool = False


def file_groups(files: list[InputFile], group_bytes: int) -> list[FileGroup]:
    """Consecutive files of about ``group_bytes`` each (a bigger file is a group of its own)."""
    groups: list[list[InputFile]] = []
    size = 0
    for f in files:
        length = f.path.stat().st_size
        if not groups or size + length > group_bytes:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += length
    return [FileGroup(tuple(g)) for g in groups]


def build_ingest(cfg: IngestConfig, *, out: Path, job: Job) -> dict:
    """Read, clean and filter the corpus into ``docs-*.parquet`` shards (``id``, ``text``).

    File groups are independent items of the job's shard map; their shards keep corpus order
    (``docs-<group>-<shard>.parquet``). With ``max_docs`` the groups are read one at a time,
    in order, until enough documents were kept, and the last one is cut at the limit.
    """
    files = resolve_inputs(cfg.paths, cfg.format, Path.cwd(), exclude=job.workdir)
    groups = file_groups(files, cfg.group_bytes) + ([FileGroup((), hub=True)] if cfg.hf_dataset else [])
    read = partial(_read_group, cfg)
    if cfg.max_docs is None:
        results = job.map("ingest-read", read, groups)
    else:
        results = []
        for g, group in enumerate(groups):
            results += job.map("ingest-read", read, [group], first_index=g)
            if sum(r["docs"] for r in results) >= cfg.max_docs:
                break
    docs, chars, shards = _collect_shards(cfg, job, results, out)
    counts: Counter[str] = Counter()
    for r in results:
        counts.update(r["counts"])
    replaced = counts.pop("replaced_lines", 0)
    skipped_files = {reason: counts.pop(reason) for reason in FILE_REASONS if reason in counts}
    if docs == 0:
        raise ValueError(
            f"corpus is empty after filtering: {_describe(cfg)} "
            f"(dropped: {dict(counts)}, skipped files: {skipped_files})"
        )
    summary = {"docs": docs, "chars": chars, "shards": shards, "files": len(files), "groups": len(results)}
    summary |= {"dropped": dict(sorted(counts.items())), "replaced_lines": replaced}
    summary |= {"skipped_files": skipped_files}
    job.sink.log_metrics(_metrics(summary), step=0)
    log.info("ingest: kept %d documents in %d shards, dropped %s", docs, shards, dict(counts))
    return summary


def _read_group(cfg: IngestConfig, group: FileGroup, out: Path) -> dict:
    """One group's cleaned, kept documents as shards in ``out``; its drop counts; per-shard sizes."""
    counts: Counter[str] = Counter()
    doc_filter = DocFilter(
        cfg.min_chars, cfg.max_chars, cfg.min_alpha_fraction, cfg.max_repeated_line_fraction
    )
    raw = _hf_docs(cfg, counts) if group.hub else _file_docs(cfg, group.files, counts)
    with ShardWriter(out, cfg.shard_docs) as writer:
        for doc in raw:
            text = clean_text(doc.text)
            reason = doc_filter.reason_to_drop(text)
            if reason is not None:
                counts[reason] += 1
                continue
            writer.add(doc.id, text)
            if cfg.max_docs is not None and writer.docs >= cfg.max_docs:
                break
    return {"docs": writer.docs, "shards": writer.shard_sizes, "counts": dict(counts)}


def _collect_shards(cfg: IngestConfig, job: Job, results: list[dict], out: Path) -> tuple[int, int, int]:
    """Link every group's shards into ``out`` in corpus order, cut at ``max_docs``: (docs, chars, shards)."""
    limit = cfg.max_docs if cfg.max_docs is not None else sum(r["docs"] for r in results)
    docs = chars = shards = 0
    for g, result in enumerate(results):
        for k, (n, n_chars) in enumerate(result["shards"]):
            if docs >= limit:
                return docs, chars, shards
            src = job.item_dir("ingest-read", g) / f"docs-{k:05d}.parquet"
            dst = out / f"docs-{g:05d}-{k:05d}.parquet"
            if docs + n <= limit:
                link_or_copy(src, dst)
                docs, chars = docs + n, chars + n_chars
            else:
                n, n_chars = copy_head(src, dst, limit - docs)
                docs, chars = docs + n, chars + n_chars
            shards += 1
    return docs, chars, shards


FILE_REASONS = ("empty_file", "binary_file")  # counted per file, not per document


def _describe(cfg: IngestConfig) -> str:
    return ", ".join([*cfg.paths, *([f"hf:{cfg.hf_dataset}:{cfg.hf_split}"] if cfg.hf_dataset else [])])


def _metrics(summary: dict) -> dict[str, float]:
    dropped = {f"dropped_{reason}": n for reason, n in summary["dropped"].items()}
    return (
        {
            "docs": summary["docs"],
            "chars": summary["chars"],
            "replaced_lines": summary["replaced_lines"],
        }
        | dropped
        | {f"skipped_{reason}": n for reason, n in summary["skipped_files"].items()}
    )


def _file_docs(cfg: IngestConfig, files: tuple[InputFile, ...], counts: Counter[str]) -> Iterator[RawDoc]:
    """The raw documents of local files, in order."""
    opts = ReadOptions(
        text_field=cfg.text_field,
        txt_mode=cfg.txt_mode,
        encoding_errors=cfg.encoding_errors,
        on_bad_record=cfg.on_bad_record,
        wiki_keep_title=cfg.wiki_keep_title,
        csv_delimiter=cfg.csv_delimiter,
        on_binary_file=cfg.on_binary_file,
    )
    for f in files:
        yield from read_file(f.path, f.format, f.source, opts, counts)


def _hf_docs(cfg: IngestConfig, counts: Counter[str]) -> Iterator[RawDoc]:
    """Stream a Hub dataset record by record (``streaming=True``: nothing is downloaded in full).

    The fingerprint knows only the dataset name/config/split, not its revision.
    """
    import datasets  # heavy import, only needed for this input kind

    stream = datasets.load_dataset(cfg.hf_dataset, cfg.hf_config, split=cfg.hf_split, streaming=True)
    for n, record in enumerate(stream):
        text = record.get(cfg.text_field)
        if isinstance(text, str):
            yield RawDoc(f"hf:{cfg.hf_dataset}:{cfg.hf_split}:{n}", text)
        elif cfg.on_bad_record == "skip":
            counts["bad_record"] += 1
        else:
            raise CorpusFormatError(
                f"hf:{cfg.hf_dataset} split {cfg.hf_split} record {n}: no string {cfg.text_field!r}"
            )


def resolve_inputs(
    patterns: tuple[str, ...], fmt: str, cwd: Path, exclude: Path | None = None
) -> list[InputFile]:
    """Expand files, directories and globs into an ordered, de-duplicated list of corpus files.

    Pipeline outputs under ``exclude`` (the workdir: stage directories, MLflow artifacts,
    Prefect's home) are never inputs, so a corpus directory that contains the workdir does not
    ingest the pipeline's own shards on the next run; other files there (e.g. the demo's
    generated corpus) are ordinary inputs.

    Files found inside a directory or by a glob whose format cannot be detected (READMEs,
    licences) are skipped with a log line; an explicitly named file of unknown format is an error.
    """
    found: dict[Path, InputFile] = {}
    sources: set[str] = set()
    skip = (exclude if exclude.is_absolute() else cwd / exclude).resolve() if exclude is not None else None
    for pattern in patterns:
        matches, root, explicit = _expand(pattern, cwd)
        if not matches:
            raise ValueError(
                f"input path matched no files: {pattern!r} (relative paths resolve against {cwd})"
            )
        for path in matches:
            if path in found or (skip is not None and is_pipeline_output(path.resolve(), skip)):
                continue
            file_format = _file_format(path, fmt, explicit)
            if file_format is None:
                log.warning("ingest: skipping %s (unknown format; set `format` to read it)", path)
                continue
            source = path.relative_to(root).as_posix()
            source = str(path) if source in sources else source  # same relative name from two roots
            sources.add(source)
            found[path] = InputFile(path, source, file_format)
    if patterns and not found:
        raise ValueError(f"no readable corpus files matched: {', '.join(patterns)}")
    return list(found.values())


WORKDIR_INTERNALS = frozenset({"mlartifacts", "mlruns", "prefect"})
STAGE_OUTPUT = re.compile(r"[0-9a-f]{16}|\.tmp-.*")


def is_pipeline_output(path: Path, workdir: Path) -> bool:
    """Whether ``path`` is something the pipeline wrote into ``workdir`` (not a source file)."""
    if not path.is_relative_to(workdir):
        return False
    parts = path.relative_to(workdir).parts
    if parts[0] in WORKDIR_INTERNALS or parts[0].startswith("mlflow.db"):
        return True
    return len(parts) >= 3 and STAGE_OUTPUT.fullmatch(parts[1]) is not None


def _expand(pattern: str, cwd: Path) -> tuple[list[Path], Path, bool]:
    """(matched files, root that ids are relative to, whether the file was named explicitly)."""
    full = Path(os.path.expanduser(pattern))
    full = full if full.is_absolute() else cwd / full
    if glob.has_magic(str(full)):
        root = Path(*_static_prefix(full.parts))
        hits = sorted(Path(p) for p in glob.glob(str(full), recursive=True))
        files = [f for h in hits for f in (_walk(h) if h.is_dir() else [h])]
        return files, root, False
    if full.is_dir():
        return _walk(full), full, False
    return ([full] if full.is_file() else []), full.parent, True


def _static_prefix(parts: tuple[str, ...]) -> list[str]:
    prefix: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        prefix.append(part)
    return prefix


def _walk(directory: Path) -> list[Path]:
    """All non-hidden files under ``directory``, sorted for a stable document order."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(directory).parts)
    )


def _file_format(path: Path, fmt: str, explicit: bool) -> Format | None:
    detected = detect_format(path) if fmt == "auto" else fmt
    if detected is None and explicit:
        raise CorpusFormatError(f"{path}: cannot tell the format from the name; set `format`")
    if detected == "parquet" and split_compression(path)[1]:
        raise CorpusFormatError(
            f"{path}: compressed Parquet files are not supported (Parquet compresses inside)"
        )
    return detected  # type: ignore[return-value]


ingest = Stage(
    "ingest",
    build_ingest,
    reads=corpus_files,
    sampled_reads=True,
    retry_on_io=True,  # Hub streaming is I/O
)
