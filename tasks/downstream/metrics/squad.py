"""SQuAD v1.1 and v2.0 exact match and F1 as offline `evaluate.Metric`s (official definitions, 0-100).

Answers are normalised like the official evaluation scripts: lower-case, drop ASCII
punctuation, drop the articles a/an/the, collapse whitespace. A prediction's EM and
F1 are each the maximum over the question's gold answers; the corpus scores are the
means times 100.

v2.0 adds unanswerable questions, whose only gold answer is the empty string: the
empty prediction scores 1 on them (EM and F1) and any other prediction 0. Each
prediction carries a no-answer score; the answer is replaced by "" when that score
is above a threshold, and the metric also reports the best EM / F1 over all
thresholds with the threshold reaching it (the official script's best_exact /
best_f1, i.e. the threshold tuned on dev), plus HasAns / NoAns splits.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")

# gold answers in the Hugging Face SQuAD layout, shared by the v1.1 and v2.0 metrics
ANSWERS = datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")})


class InMemoryMetric(evaluate.Metric):
    """An `evaluate.Metric` that keeps its buffer in memory by default (no cache files, no network)."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("keep_in_memory", True)
        super().__init__(**kwargs)


def normalize_answer(text: str) -> str:
    """Official SQuAD normalisation: lower, strip punctuation, strip articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between normalised answers (0 when they share no token)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


class SquadMetric(InMemoryMetric):
    """SQuAD v1.1 EM / F1 in the HF input layout, without the Hub.

    predictions: ``{"id": str, "prediction_text": str}``; references: ``{"id": str,
    "answers": {"text": [str, ...], "answer_start": [int, ...]}}``. Returns
    ``{"exact_match": ..., "f1": ...}`` on a 0-100 scale. Every reference must have a
    prediction (a missing one is an error, not a silent zero).
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="SQuAD v1.1 exact match and token F1, max over gold answers, on a 0-100 scale.",
            citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension, EMNLP 2016.",
            inputs_description="predictions: {id, prediction_text}; references: {id, answers}.",
            features=datasets.Features(
                {
                    "predictions": {
                        "id": datasets.Value("string"),
                        "prediction_text": datasets.Value("string"),
                    },
                    "references": {"id": datasets.Value("string"), "answers": ANSWERS},
                }
            ),
        )

    def _compute(self, predictions: Sequence[dict], references: Sequence[dict]) -> dict[str, float]:
        by_id = {p["id"]: p["prediction_text"] for p in predictions}
        missing = [r["id"] for r in references if r["id"] not in by_id]
        if missing or not references:
            raise ValueError(
                f"SquadMetric: no prediction for question id(s) {missing[:5]} (or no references)"
            )
        em = f1 = 0.0
        for ref in references:
            golds, pred = ref["answers"]["text"], by_id[ref["id"]]
            em += max(exact_match(pred, g) for g in golds)
            f1 += max(token_f1(pred, g) for g in golds)
        return {"exact_match": 100.0 * em / len(references), "f1": 100.0 * f1 / len(references)}


def v2_gold_answers(texts: Sequence[str]) -> list[str]:
    """Gold answers as the v2 script counts them: those that normalise to nothing are dropped, and a
    question left without any is unanswerable, with the single gold answer ""."""
    kept = [t for t in texts if normalize_answer(t)]
    return kept if kept else [""]


def v2_f1(prediction: str, gold: str) -> float:
    """Token F1 where an empty answer matches only an empty answer (1.0 when both are empty)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return token_f1(prediction, gold)


def best_threshold(na_scores: np.ndarray, answered: np.ndarray, abstained: np.ndarray) -> tuple[float, float]:
    """(best score on 0-100, threshold) over every way of cutting the questions by no-answer score.

    Question i is answered (scoring ``answered[i]``) when ``na_scores[i] <= threshold`` and
    abstains (scoring ``abstained[i]``) otherwise. Cuts fall only between distinct finite
    scores, so the returned threshold reproduces the returned score exactly; the "abstain
    everywhere" cut is reported as a threshold 1 below the smallest score. Ties in the
    best score go to the smallest threshold, as in the official script.
    """
    order = np.argsort(na_scores, kind="stable")
    sorted_na = na_scores[order]  # (N,)
    totals = abstained.sum() + np.cumsum(answered[order] - abstained[order])  # (N,) after answering 0..i
    finite = np.isfinite(sorted_na)
    last_of_group = np.append(sorted_na[1:] != sorted_na[:-1], True)
    cuts = np.flatnonzero(last_of_group & finite)
    best_score = float(abstained.sum())
    best_thresh = float(sorted_na[finite][0] - 1.0) if finite.any() else 0.0
    for i in cuts:
        if totals[i] > best_score + 1e-12:
            best_score, best_thresh = float(totals[i]), float(sorted_na[i])
    return 100.0 * best_score / len(na_scores), best_thresh


class SquadV2Metric(InMemoryMetric):
    """SQuAD v2.0 EM / F1 with no-answer scoring, in the HF ``squad_v2`` input layout, without the Hub.

    predictions: ``{"id", "prediction_text", "no_answer_probability"}`` where prediction_text
    is the best NON-null span ("" if none) and no_answer_probability any score that grows
    with the belief that there is no answer (bertflow passes the null score minus the best
    span score); references: ``{"id", "answers": {"text": [...], "answer_start": [...]}}``
    with empty lists for unanswerable questions. ``compute(..., no_answer_threshold=t)``
    predicts "" where the score exceeds t (default 0.0, BERT's null_score_diff_threshold).
    Returns the official script's keys: exact, f1, total, HasAns_* / NoAns_* (when such
    questions exist), best_exact, best_exact_thresh, best_f1, best_f1_thresh.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="SQuAD v2.0 exact match / F1 with no-answer threshold tuning, on a 0-100 scale.",
            citation="Rajpurkar et al., Know What You Don't Know: Unanswerable Questions for SQuAD, 2018.",
            inputs_description="predictions: {id, prediction_text, no_answer_probability}; "
            "references: {id, answers}.",
            features=datasets.Features(
                {
                    "predictions": {
                        "id": datasets.Value("string"),
                        "prediction_text": datasets.Value("string"),
                        "no_answer_probability": datasets.Value("float64"),
                    },
                    "references": {"id": datasets.Value("string"), "answers": ANSWERS},
                }
            ),
        )

    def _compute(
        self, predictions: Sequence[dict], references: Sequence[dict], no_answer_threshold: float = 0.0
    ) -> dict[str, float]:
        by_id = {p["id"]: p for p in predictions}
        missing = [r["id"] for r in references if r["id"] not in by_id]
        if missing or not references:
            raise ValueError(
                f"SquadV2Metric: no prediction for question id(s) {missing[:5]} (or no references)"
            )
        golds = [v2_gold_answers(r["answers"]["text"]) for r in references]
        preds = [by_id[r["id"]]["prediction_text"] for r in references]
        na = np.array([by_id[r["id"]]["no_answer_probability"] for r in references], dtype=np.float64)
        has_ans = np.array([g != [""] for g in golds])  # (N,)
        raw = {
            "exact": np.array(
                [max(exact_match(p, g) for g in gs) for p, gs in zip(preds, golds, strict=True)]
            ),
            "f1": np.array([max(v2_f1(p, g) for g in gs) for p, gs in zip(preds, golds, strict=True)]),
        }
        abstained = (~has_ans).astype(np.float64)  # predicting "" is right exactly on unanswerable questions
        out: dict[str, float] = {"total": float(len(references))}
        for name, scores in raw.items():
            final = np.where(na > no_answer_threshold, abstained, scores)  # (N,)
            out[name] = 100.0 * float(final.mean())
            for split, mask in (("HasAns", has_ans), ("NoAns", ~has_ans)):
                if mask.any():
                    out[f"{split}_{name}"] = 100.0 * float(final[mask].mean())
                    out[f"{split}_total"] = float(mask.sum())
            out[f"best_{name}"], out[f"best_{name}_thresh"] = best_threshold(na, scores, abstained)
        return out
