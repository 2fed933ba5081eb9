"""Reader for CoNLL-style tagging files: one token per line, a blank line between sentences.

Columns are separated by tabs or spaces (WikiANN: ``token<TAB>tag``; CoNLL-2003:
``token POS chunk NER``). The tag is the last column unless the task names its columns
(`TaskSpec.headerless_columns`) and the tag column (`TaskSpec.label_field`); the token is
always the first. ``-DOCSTART-`` lines are document separators and are skipped. IOB1 and IOB2
are both accepted and normalised to IOB2 (`tasks.downstream.tags`). Every malformed line
raises `ConllFormatError` naming the file, the line and what is wrong with it: a silently
skipped line would change the words a dev score counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.downstream.tags import check_tag, to_iob2
from tasks.downstream.tasks import TaskSpec


class ConllFormatError(ValueError):
    """A tagging file that does not match its task's format."""


@dataclass(frozen=True)
class TokenExample:
    """One sentence: its words and their IOB2 tags (`id` is the file line where it starts)."""

    id: str
    words: tuple[str, ...]
    tags: tuple[str, ...]


def conll_path(data_dir: str | Path, spec: TaskSpec, file: str) -> Path:
    """Where a tagging task's file lives in a downstream data dir: ``<data_dir>/<dir_name>/<file>``."""
    return Path(data_dir) / spec.dir_name / file


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, columns) of every line; a blank line yields no columns (a sentence break)."""
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            yield number, line.split()


def _tag_column(path: Path, line: int, width: int, spec: TaskSpec) -> int:
    """Index of the tag column for a line of `width` columns."""
    if spec.headerless_columns is None:
        if width < 2:
            raise ConllFormatError(f"{path}: line {line}: a token with no tag (expected 'token<TAB>tag')")
        return width - 1
    if width != len(spec.headerless_columns):
        raise ConllFormatError(
            f"{path}: line {line}: expected {len(spec.headerless_columns)} columns "
            f"({', '.join(spec.headerless_columns)}), found {width}"
        )
    return spec.headerless_columns.index(spec.label_field)


def read_conll_file(path: str | Path, spec: TaskSpec) -> list[TokenExample]:
    """Sentences of one tagging file, validated line by line, tags normalised to IOB2."""
    path = Path(path)
    examples: list[TokenExample] = []
    words: list[str] = []
    tags: list[str] = []
    start, width = 0, None

    def close() -> None:
        if words:
            examples.append(TokenExample(str(start), tuple(words), to_iob2(tags)[0]))
            words.clear()
            tags.clear()

    for number, columns in _lines(path):
        if not columns or columns[0] == "-DOCSTART-":
            close()
            continue
        tag = columns[_tag_column(path, number, len(columns), spec)]
        width = len(columns) if width is None else width
        if len(columns) != width:
            raise ConllFormatError(
                f"{path}: line {number}: {len(columns)} columns, but the file's lines have {width}"
            )
        problem = check_tag(tag)
        if problem is None and spec.labels and tag not in spec.labels:
            problem = f"tag {tag!r} is not one of {spec.name}'s tags {list(spec.labels)}"
        if problem:
            raise ConllFormatError(f"{path}: line {number}: column {spec.label_field!r}: {problem}")
        if not words:
            start = number
        words.append(columns[0])
        tags.append(tag)
    close()
    if not examples:
        raise ConllFormatError(f"{path}: empty file, expected {spec.name} sentences (token and tag per line)")
    return examples
