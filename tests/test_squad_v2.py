"""SQuAD v2.0: reader, no-answer features, the v2 metric with threshold tuning, and v2 evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from word_tokenizer import word_tokenizer, words_of

from models.config import EncoderConfig
from models.heads import HeadSpec
from models.io import load_multitask, save_checkpoint
from models.multitask import MultiTaskModel
from tasks.downstream.features import encode_squad, read_examples
from tasks.downstream.metrics.squad import SquadV2Metric, best_threshold, v2_f1
from tasks.downstream.squad import SquadExample, SquadFormatError, read_squad_file
from tasks.downstream.tasks import get_task
from tasks.judge.evaluation import EvalConfig, evaluate_checkpoint
from tasks.sink import MemorySink
from tasks.store.artifact import Artifact

CONTEXT = "Denver Broncos defeated the Carolina Panthers 24-10 at Levi's Stadium."
LONG_CONTEXT = " ".join(f"Word{i}" for i in range(100)) + "."  # 101 context tokens

ANSWERABLE = {"id": "q1", "question": "Who won?", "answers": [{"text": "Broncos", "answer_start": 7}]}
UNANSWERABLE = {
    "id": "q2",
    "question": "Who lost the 1990 game?",
    "answers": [],
    "plausible_answers": [{"text": "Carolina Panthers", "answer_start": 28}],
    "is_impossible": True,
}


def squad_json(qas: list[dict], context: str = CONTEXT) -> dict:
    return {"version": "v2.0", "data": [{"title": "SB50", "paragraphs": [{"context": context, "qas": qas}]}]}


def tiny_tokenizer(texts: list[str]) -> Tokenizer:
    """Lower-casing WordPiece over the texts' words with the project's fixed special ids."""
    return word_tokenizer(words_of(texts))


def _write(path: Path, qas: list[dict], context: str = CONTEXT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(squad_json(qas, context)))
    return path


def test_v2_reader_accepts_unanswerable_and_v1_mode_rejects_them(tmp_path: Path) -> None:
    path = _write(tmp_path / "dev.json", [{**ANSWERABLE, "is_impossible": False}, UNANSWERABLE])
    q1, q2 = read_squad_file(path, version="2.0")
    assert q1 == SquadExample("q1", "Who won?", CONTEXT, (("Broncos", 7),), is_impossible=False)
    assert q2.is_impossible and q2.answers == () and q2.answer_texts == ()
    with pytest.raises(SquadFormatError, match=r"question id 'q2': is_impossible=true in SQuAD v1\.1 mode"):
        read_squad_file(path)
    no_flag = _write(tmp_path / "noflag.json", [{"id": "q3", "question": "?", "answers": []}])
    assert read_squad_file(no_flag, version="2.0")[0].is_impossible  # empty answers without a flag
    with pytest.raises(SquadFormatError, match="question id 'q3' has no answers"):
        read_squad_file(no_flag, version="1.1")


@pytest.mark.parametrize(
    ("qa", "message"),
    [
        ({**ANSWERABLE, "is_impossible": True}, r"is_impossible=true but 1 answer\(s\) given"),
        ({**UNANSWERABLE, "is_impossible": False}, r"answerable \(is_impossible=false\) but has no answers"),
        ({**UNANSWERABLE, "is_impossible": "yes"}, "'is_impossible' must be true or false"),
    ],
)
def test_v2_contradictions_are_errors(tmp_path: Path, qa: dict, message: str) -> None:
    with pytest.raises(SquadFormatError, match=message):
        read_squad_file(_write(tmp_path / "dev.json", [qa]), version="2.0")


def test_task_entry_reads_its_own_dir_in_v2_mode(tmp_path: Path) -> None:
    spec = get_task("SQuAD-v2")
    assert spec.kind == "span" and spec.no_answer and not spec.is_glue and spec.num_labels == 2
    _write(tmp_path / "squad-v2" / "dev.json", [ANSWERABLE, UNANSWERABLE])
    examples = read_examples(tmp_path, spec, "dev.json")
    assert [e.is_impossible for e in examples] == [False, True]


def test_unanswerable_windows_point_at_cls() -> None:
    example = SquadExample("x", "Where is it?", LONG_CONTEXT, (), is_impossible=True)
    tok = tiny_tokenizer([LONG_CONTEXT, example.question])
    windows = encode_squad(tok, [example], max_seq_len=24, doc_stride=8)
    assert len(windows) == 12 and all(w.start_position == w.end_position == 0 for w in windows)


def _ref(qid: str, *texts: str) -> dict:
    return {"id": qid, "answers": {"text": list(texts), "answer_start": [0] * len(texts)}}


def _pred(qid: str, text: str, na: float) -> dict:
    return {"id": qid, "prediction_text": text, "no_answer_probability": na}


def test_v2_metric_by_hand() -> None:
    # q1 right (na -2), q2 partial "the blue" vs "blue mat": EM 0, F1 2/3 (na -1.5),
    # q3 unanswerable predicted "mat" (na 3), q4 unanswerable predicted "cat" (na -1).
    refs = [_ref("q1", "red"), _ref("q2", "blue mat"), _ref("q3"), _ref("q4")]
    preds = [_pred("q1", "red", -2.0), _pred("q2", "the blue", -1.5), _pred("q3", "mat", 3.0)]
    preds.append(_pred("q4", "cat", -1.0))
    out = SquadV2Metric().compute(predictions=preds, references=refs)
    # threshold 0: q1 1 | q2 answered EM 0 F1 2/3 | q3 abstains: right | q4 answered: wrong
    assert out["exact"] == pytest.approx(50.0) and out["f1"] == pytest.approx(100 * (2 + 2 / 3) / 4)
    assert out["HasAns_exact"] == pytest.approx(50.0) and out["HasAns_f1"] == pytest.approx(100 * 5 / 6)
    assert out["NoAns_exact"] == out["NoAns_f1"] == pytest.approx(50.0)
    assert (out["total"], out["HasAns_total"], out["NoAns_total"]) == (4.0, 2.0, 2.0)
    # sweep (answer when na <= t): base 2 (abstain all), +1 q1 -> 3, q2 +0 / +2/3, q4 -1, q3 -1
    assert (out["best_exact"], out["best_exact_thresh"]) == (pytest.approx(75.0), -2.0)
    assert (out["best_f1"], out["best_f1_thresh"]) == (pytest.approx(100 * (3 + 2 / 3) / 4), -1.5)
    stricter = SquadV2Metric().compute(predictions=preds, references=refs, no_answer_threshold=-2.0)
    assert stricter["exact"] == pytest.approx(out["best_exact"])  # the tuned threshold reproduces best


def test_v2_gold_fed_back_is_perfect_and_empty_matches_empty() -> None:
    refs = [_ref("q1", "Denver Broncos", "Broncos"), _ref("q2"), _ref("q3", "a")]  # "a" normalises to ""
    preds = [_pred("q1", "Denver Broncos", -5.0), _pred("q2", "", 5.0), _pred("q3", "", 5.0)]
    out = SquadV2Metric().compute(predictions=preds, references=refs)
    assert out["exact"] == out["f1"] == out["best_exact"] == out["best_f1"] == 100.0
    assert out["NoAns_total"] == 2.0  # a gold answer that normalises to nothing makes it unanswerable
    assert v2_f1("", "") == 1.0 and v2_f1("x", "") == 0.0 and v2_f1("", "x") == 0.0


def test_best_threshold_matches_brute_force_and_handles_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 30
        na = rng.integers(-5, 5, n).astype(float)  # many ties
        answered, abstained = rng.uniform(0, 1, n).round(1), (rng.uniform(0, 1, n) < 0.5).astype(float)
        score, thresh = best_threshold(na, answered, abstained)
        brute = max(100 * np.where(na <= t, answered, abstained).mean() for t in [-99.0, *na])
        assert score == pytest.approx(brute)
        assert 100 * np.where(na <= thresh, answered, abstained).mean() == pytest.approx(score)
    # a tie group is answered together: answering q_a (+1) forces q_b (-1) in too
    assert best_threshold(np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0])) == (50.0, -1.0)
    assert best_threshold(np.array([np.inf]), np.zeros(1), np.ones(1)) == (100.0, 0.0)


def test_v2_evaluation_report_and_rows(tmp_path: Path) -> None:
    qas = [ANSWERABLE, UNANSWERABLE, {**UNANSWERABLE, "id": "q3"}]
    _write(tmp_path / "data" / "squad-v2" / "dev.json", qas)
    tok = tiny_tokenizer([CONTEXT, *(q["question"] for q in qas)])
    cfg = EncoderConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", MultiTaskModel(cfg, {"SQuAD-v2": HeadSpec("span")}))
    tok.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    checkpoint = Artifact(stage="finetune", fingerprint="v2ft0000", path=str(tmp_path / "ckpt"))
    eval_cfg = EvalConfig(data_dir=str(tmp_path / "data"), tasks=("SQuAD-v2",), max_seq_len=24, doc_stride=8)
    out = evaluate_checkpoint(eval_cfg, checkpoint, workdir=tmp_path / "work", sink=MemorySink())
    report = json.loads(out.file("report.json").read_text())
    v2 = report["squad_v2"]
    assert v2 == report["per_task"]["SQuAD-v2"] and "glue_avg" not in report
    assert {"exact", "f1", "HasAns_exact", "NoAns_f1", "best_exact", "best_f1_thresh"} <= set(v2)
    rows = [json.loads(line) for line in out.file("predictions/SQuAD-v2.jsonl").read_text().splitlines()]
    assert [r["is_impossible"] for r in rows] == [False, True, True]
    # by hand: each question fits one window [CLS] q [SEP] context [SEP]; the null score is the [CLS]
    # start + end logit, the best span the highest start + end over context tokens, and the answer is
    # "" when null - best > 0 (the default threshold)
    model = load_multitask(tmp_path / "ckpt").eval()
    context = tok.encode(CONTEXT, add_special_tokens=False)
    assert len(context.ids) == 15
    for qa, row in zip(qas, rows, strict=True):
        question = tok.encode(qa["question"], add_special_tokens=False).ids
        ids = torch.tensor([[2, *question, 3, *context.ids, 3]])
        assert ids.size(1) <= 24
        types = torch.tensor([[0] * (len(question) + 2) + [1] * (len(context.ids) + 1)])
        with torch.no_grad():
            start, end = (t[0] for t in model("SQuAD-v2", ids, types, torch.ones_like(ids)))
        first = len(question) + 2
        best, span = max(
            (float(start[first + a] + end[first + b]), CONTEXT[context.offsets[a][0] : context.offsets[b][1]])
            for a in range(15)
            for b in range(a, 15)
        )
        null = float(start[0] + end[0])
        assert row["null_score"] == pytest.approx(null, abs=1e-5)
        assert row["no_answer_score"] == pytest.approx(null - best, abs=1e-5)
        assert row["best_span"] == span
        assert row["prediction_text"] == ("" if null - best > 0.0 else span)
    abstained = [r["prediction_text"] == "" for r in rows]
    assert v2["NoAns_exact"] == pytest.approx(100 * np.mean(abstained[1:]))
    assert v2["HasAns_exact"] == (100.0 if rows[0]["prediction_text"] == "Broncos" else 0.0)
