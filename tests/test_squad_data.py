"""SQuAD v1.1 reader: parsing, answer-offset validation and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from word_tokenizer import word_tokenizer, words_of

from tasks.downstream.features import encode_squad, window_starts
from tasks.downstream.spans import best_spans
from tasks.downstream.squad import SquadExample, SquadFormatError, read_squad_file

CONTEXT = "Denver Broncos defeated the Carolina Panthers 24-10 at Levi's Stadium."


def squad_json(qas: list[dict], context: str = CONTEXT) -> dict:
    return {"version": "1.1", "data": [{"title": "SB50", "paragraphs": [{"context": context, "qas": qas}]}]}


def _write(tmp_path: Path, payload: dict | str) -> Path:
    path = tmp_path / "dev.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    return path


def test_reads_questions_with_all_answers(tmp_path: Path) -> None:
    qas = [
        {
            "id": "q1",
            "question": "Who won?",
            "answers": [
                {"text": "Denver Broncos", "answer_start": 0},
                {"text": "Broncos", "answer_start": 7},
            ],
        },
        {"id": "q2", "question": "Where?", "answers": [{"text": "Levi's Stadium", "answer_start": 55}]},
    ]
    examples = read_squad_file(_write(tmp_path, squad_json(qas)))
    assert examples == [
        SquadExample("q1", "Who won?", CONTEXT, (("Denver Broncos", 0), ("Broncos", 7))),
        SquadExample("q2", "Where?", CONTEXT, (("Levi's Stadium", 55),)),
    ]
    assert examples[0].answer_texts == ("Denver Broncos", "Broncos")


def test_answer_offset_mismatch_names_file_and_id(tmp_path: Path) -> None:
    qas = [{"id": "q-bad", "question": "Who?", "answers": [{"text": "Broncos", "answer_start": 6}]}]
    with pytest.raises(SquadFormatError, match=r"dev\.json: question id 'q-bad': answer 'Broncos' not found"):
        read_squad_file(_write(tmp_path, squad_json(qas)))


def test_question_without_answers_is_an_error(tmp_path: Path) -> None:
    qas = [{"id": "q-none", "question": "Who?", "answers": []}]
    with pytest.raises(SquadFormatError, match=r"dev\.json: question id 'q-none' has no answers"):
        read_squad_file(_write(tmp_path, squad_json(qas)))


def test_not_squad_json(tmp_path: Path) -> None:
    with pytest.raises(SquadFormatError, match=r"dev\.json: line 1: invalid JSON"):
        read_squad_file(_write(tmp_path, "{oops"))
    with pytest.raises(SquadFormatError, match="'data' list"):
        read_squad_file(_write(tmp_path, {"version": "1.1"}))
    with pytest.raises(SquadFormatError, match="no questions"):
        read_squad_file(_write(tmp_path, squad_json([])))


def tiny_tokenizer(texts: list[str]) -> Tokenizer:
    """Lower-casing WordPiece over the texts' words with the project's fixed special ids."""
    return word_tokenizer(words_of(texts))


LONG_CONTEXT = " ".join(f"Word{i}" for i in range(100)) + "."  # 101 tokens: "word0" ... "word99" "."
LONG_EXAMPLE = SquadExample(
    "long", "Where is it?", LONG_CONTEXT, (("Word57 Word58", LONG_CONTEXT.index("Word57")),)
)


def test_long_context_windows_cover_everything() -> None:
    tok = tiny_tokenizer([LONG_CONTEXT, LONG_EXAMPLE.question])
    # question = 4 tokens -> window = 24 - 4 - 3 = 17 context tokens, starts 0, 8, ..., 88 (88 + 17 >= 101)
    windows = encode_squad(tok, [LONG_EXAMPLE], max_seq_len=24, doc_stride=8)
    assert len(windows) == 12
    covered = {o for w in windows for o in w.context_offsets if o is not None}
    assert len(covered) == 101  # every context token is in at least one window
    for w in windows:
        assert len(w.input_ids) <= 24 and w.input_ids[0] == 2 and w.input_ids[5] == 3 and w.input_ids[-1] == 3
        assert w.token_type_ids == (0,) * 6 + (1,) * (len(w.input_ids) - 6)
    labelled = [w for w in windows if w.start_position != 0]
    assert len(labelled) == 2  # windows starting at 48 (48..64) and 56 (56..72) hold tokens 57-58
    for w in labelled:
        a, b = w.context_offsets[w.start_position][0], w.context_offsets[w.end_position][1]
        assert LONG_CONTEXT[a:b] == "Word57 Word58"


def test_decoding_recovers_the_answer_across_windows() -> None:
    tok = tiny_tokenizer([LONG_CONTEXT, LONG_EXAMPLE.question])
    windows = encode_squad(tok, [LONG_EXAMPLE], max_seq_len=24, doc_stride=8)
    rng = np.random.default_rng(0)
    starts = [rng.normal(size=24).astype(np.float32) for _ in windows]
    ends = [rng.normal(size=24).astype(np.float32) for _ in windows]
    for w, s, e in zip(windows, starts, ends, strict=True):
        if w.start_position:  # an "oracle" model: confident on the labelled positions
            s[w.start_position] += 10.0
            e[w.end_position] += 10.0
        s[0] = e[0] = 50.0  # [CLS] and question tokens must never be picked
    spans = best_spans(windows, LONG_CONTEXT, starts, ends, n_best=5, max_answer_length=10)
    assert spans[0].text == "Word57 Word58"
    assert len(spans) == 5 and len({c.text for c in spans}) == 5
    assert all(c.score <= spans[0].score for c in spans)
    assert (
        best_spans(windows, LONG_CONTEXT, starts, ends, n_best=5, max_answer_length=1)[0].text
        != spans[0].text
    )


def test_short_context_is_one_window_and_window_starts() -> None:
    tok = tiny_tokenizer([CONTEXT, "Who won?"])
    example = SquadExample("q1", "Who won?", CONTEXT, (("Broncos", 7),))
    (window,) = encode_squad(tok, [example], max_seq_len=64, doc_stride=16)
    a, b = window.context_offsets[window.start_position][0], window.context_offsets[window.end_position][1]
    assert CONTEXT[a:b] == "Broncos"
    assert window_starts(10, 4, 100) == [0, 4, 8]  # stride above the window never leaves gaps
    with pytest.raises(ValueError, match="leaves no room for context"):
        encode_squad(tok, [example], max_seq_len=5, doc_stride=16)
