"""Reader for SQuAD v1.1 and v2.0 JSON (``{"version", "data": [{"title", "paragraphs": [...]}]}``).

Training needs character offsets that really point at the answer text, so every gold
answer is checked against ``context[answer_start : answer_start + len(text)]``; a
mismatch is a data error (wrong file, re-encoded context) and raises instead of
producing a silently wrong label.

v1.1 has no unanswerable questions: a question without answers (or one flagged
``is_impossible``) is an error in v1.1 mode, because it would otherwise be trained to
point at [CLS] and scored as a miss. v2.0 adds unanswerable questions: they carry
``"is_impossible": true`` and an empty ``answers`` list (the train file keeps the
distractor spans under ``plausible_answers``, which are not answers and are ignored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.downstream.tasks import TaskSpec

SquadVersion = Literal["1.1", "2.0"]


class SquadFormatError(ValueError):
    """A SQuAD file that does not follow the v1.1 / v2.0 format."""


@dataclass(frozen=True)
class SquadExample:
    """One question on one context; `answers` are (text, char start) pairs, first = training target.

    `is_impossible` (v2.0 only) marks a question the context does not answer; its `answers` is empty.
    """

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    is_impossible: bool = False

    @property
    def answer_texts(self) -> tuple[str, ...]:
        return tuple(text for text, _ in self.answers)


def squad_path(data_dir: str | Path, spec: TaskSpec, file: str) -> Path:
    """Where a SQuAD file lives in a downstream data dir: ``<data_dir>/<spec.dir_name>/<file>``."""
    return Path(data_dir) / spec.dir_name / file


def read_squad_file(path: str | Path, version: SquadVersion = "1.1") -> list[SquadExample]:
    """Parse and validate a SQuAD JSON file into one example per question.

    `version` is the format the caller expects: "2.0" allows unanswerable questions.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SquadFormatError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise SquadFormatError(f"{path}: expected a JSON object with a 'data' list (SQuAD v{version})")
    examples = [
        _example(path, qa, _field(path, paragraph, "context", "paragraph"), version)
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


def _example(path: Path, qa: dict, context: str, version: SquadVersion) -> SquadExample:
    """Build one example, checking answerability against the version and every answer's offset."""
    qid = str(_field(path, qa, "id", "question"))
    answers = _field(path, qa, "answers", f"question id {qid!r}")
    impossible = _is_impossible(path, qid, qa, answers, version)
    checked = tuple(_checked_answer(path, qid, answer, context) for answer in answers)
    return SquadExample(
        id=qid,
        question=_field(path, qa, "question", qid),
        context=context,
        answers=checked,
        is_impossible=impossible,
    )


def _is_impossible(path: Path, qid: str, qa: dict, answers: list, version: SquadVersion) -> bool:
    """The question's answerability; contradictions between the flag and the answers are errors."""
    where = f"{path}: question id {qid!r}"
    if not isinstance(answers, list):
        raise SquadFormatError(f"{where}: 'answers' must be a list")
    if version == "1.1":
        if qa.get("is_impossible"):
            raise SquadFormatError(f"{where}: is_impossible=true in SQuAD v1.1 mode (read it as v2.0)")
        if not answers:
            raise SquadFormatError(f"{where} has no answers (SQuAD v1.1 requires one)")
        return False
    impossible = qa.get("is_impossible", not answers)
    if not isinstance(impossible, bool):
        raise SquadFormatError(f"{where}: 'is_impossible' must be true or false, got {impossible!r}")
    if impossible and answers:
        raise SquadFormatError(f"{where}: is_impossible=true but {len(answers)} answer(s) given")
    if not impossible and not answers:
        raise SquadFormatError(f"{where}: answerable (is_impossible=false) but has no answers")
    return impossible


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
