"""Reader for SQuAD v1.1 JSON (``{"version", "data": [{"title", "paragraphs": [{"context", "qas"}]}]}``).

Training needs character offsets that really point at the answer text, so every gold
answer is checked against ``context[answer_start : answer_start + len(text)]``; a
mismatch is a data error (wrong file, re-encoded context) and raises instead of
producing a silently wrong label. v1.1 has no unanswerable questions: a question
without answers is also an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.downstream.tasks import TaskSpec


class SquadFormatError(ValueError):
    """A SQuAD file that does not follow the v1.1 format."""


@dataclass(frozen=True)
class SquadExample:
    """One question on one context; `answers` are (text, char start) pairs, first = training target."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]

    @property
    def answer_texts(self) -> tuple[str, ...]:
        return tuple(text for text, _ in self.answers)


def squad_path(data_dir: str | Path, spec: TaskSpec, file: str) -> Path:
    """Where a SQuAD file lives in a downstream data dir: ``<data_dir>/squad/<file>``."""
    return Path(data_dir) / spec.dir_name / file


def read_squad_file(path: str | Path) -> list[SquadExample]:
    """Parse and validate a SQuAD v1.1 JSON file into one example per question."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SquadFormatError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise SquadFormatError(f"{path}: expected a JSON object with a 'data' list (SQuAD v1.1)")
    examples = [
        _example(path, qa, paragraph["context"])
        for article in payload["data"]
        for paragraph in _field(path, article, "paragraphs", "article")
        for qa in _field(path, paragraph, "qas", "paragraph")
    ]
    if not examples:
        raise SquadFormatError(f"{path}: no questions found")
    return examples


def _field(path: Path, obj: Any, key: str, what: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise SquadFormatError(f"{path}: {what} without a {key!r} field")
    return obj[key]


def _example(path: Path, qa: dict, context: str) -> SquadExample:
    """Build one example, checking that every answer sits at its `answer_start`."""
    qid = str(_field(path, qa, "id", "question"))
    answers = _field(path, qa, "answers", f"question id {qid!r}")
    if not answers:
        raise SquadFormatError(f"{path}: question id {qid!r} has no answers (SQuAD v1.1 requires one)")
    checked = tuple(_checked_answer(path, qid, answer, context) for answer in answers)
    return SquadExample(id=qid, question=_field(path, qa, "question", qid), context=context, answers=checked)


def _checked_answer(path: Path, qid: str, answer: dict, context: str) -> tuple[str, int]:
    text, start = answer.get("text"), answer.get("answer_start")
    if not isinstance(text, str) or not isinstance(start, int):
        raise SquadFormatError(
            f"{path}: question id {qid!r}: answer needs 'text' (str) and 'answer_start' (int)"
        )
    found = context[start : start + len(text)]
    if found != text:
        raise SquadFormatError(
            f"{path}: question id {qid!r}: answer {text!r} not found at answer_start={start} "
            f"(context there reads {found!r})"
        )
    return text, start
