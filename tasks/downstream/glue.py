"""Reader for the ORIGINAL GLUE tsv files (as distributed by the benchmark, not HF's parquet).

The files are tab-separated with no quoting convention: sentences contain unbalanced
double quotes (MRPC, SST-2), so the csv module runs with ``QUOTE_NONE``. Some files
start with a UTF-8 byte-order mark (MRPC) and some lack a trailing newline (CoLA dev);
``utf-8-sig`` and the csv reader absorb both. Every malformed row raises
`GlueFormatError` naming the file, the physical line number and the offending column,
because a silently skipped row changes a dev-set score.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.downstream.tasks import TaskSpec


class GlueFormatError(ValueError):
    """A GLUE tsv that does not match its task's format."""


@dataclass(frozen=True)
class GlueExample:
    """One labelled sentence (pair): `label` is a class index, or a float for regression."""

    id: str
    text_a: str
    text_b: str | None
    label: int | float


def glue_path(data_dir: str | Path, spec: TaskSpec, file: str) -> Path:
    """Where a task file lives in a downstream data dir: ``<data_dir>/glue/<TASK>/<file>``."""
    return Path(data_dir) / "glue" / spec.dir_name / file


def read_glue_file(path: str | Path, spec: TaskSpec) -> list[GlueExample]:
    """Parse one GLUE tsv (train or dev) of `spec`'s task into examples, validating every row."""
    path = Path(path)
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise GlueFormatError(f"{path}: empty file, expected {spec.name} rows")
    if spec.headerless_columns is not None:
        columns, data = list(spec.headerless_columns), _chain(first, rows)
    else:
        columns, data = first[1], rows
    index = _column_index(path, columns, spec)
    examples = [_example(path, line, row, columns, index, spec) for line, row in data]
    if not examples:
        raise GlueFormatError(f"{path}: no data rows after the header")
    return examples


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(physical line number, fields) for every non-blank line; one record per line under QUOTE_NONE."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            if row:
                yield reader.line_num, row


def _chain(first: tuple[int, list[str]], rest: Iterator[tuple[int, list[str]]]) -> Iterator:
    yield first
    yield from rest


def _column_index(path: Path, columns: Sequence[str], spec: TaskSpec) -> dict[str, int]:
    """Position of every column the task needs; a missing one is a format error naming it."""
    needed = [*spec.text_fields, spec.label_field] + ([spec.id_field] if spec.id_field else [])
    missing = [name for name in needed if name not in columns]
    if missing:
        raise GlueFormatError(
            f"{path}: line 1: header lacks column(s) {missing} for {spec.name} (header: {list(columns)})"
        )
    return {name: list(columns).index(name) for name in needed}


def _example(
    path: Path, line: int, row: list[str], columns: Sequence[str], index: dict[str, int], spec: TaskSpec
) -> GlueExample:
    """Validate one row's width and label and turn it into a `GlueExample`."""
    if len(row) != len(columns):
        raise GlueFormatError(
            f"{path}: line {line}: expected {len(columns)} tab-separated columns "
            f"({', '.join(columns)}), found {len(row)}"
        )
    texts = [row[index[name]] for name in spec.text_fields]
    label = _parse_label(path, line, row[index[spec.label_field]], spec)
    example_id = row[index[spec.id_field]] if spec.id_field else str(line)
    return GlueExample(
        id=example_id, text_a=texts[0], text_b=texts[1] if len(texts) > 1 else None, label=label
    )


def _parse_label(path: Path, line: int, raw: str, spec: TaskSpec) -> int | float:
    """Class index for classification (raw string must be in `spec.labels`); bounded float for regression."""
    where = f"{path}: line {line}: column {spec.label_field!r}"
    if spec.kind == "classification":
        if raw not in spec.labels:
            raise GlueFormatError(f"{where}: label {raw!r} is not one of {list(spec.labels)}")
        return spec.labels.index(raw)
    try:
        value = float(raw)
    except ValueError:
        raise GlueFormatError(f"{where}: {raw!r} is not a number") from None
    low, high = spec.value_range or (float("-inf"), float("inf"))
    if not low <= value <= high:
        raise GlueFormatError(f"{where}: score {value} outside [{low}, {high}]")
    return value
