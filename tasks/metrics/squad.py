"""SQuAD v1.1 exact match and F1 as an offline `evaluate.Metric` (official definitions, 0-100 scale).

Answers are normalised like the official evaluation script: lower-case, drop ASCII
punctuation, drop the articles a/an/the, collapse whitespace. A prediction's EM and
F1 are each the maximum over the question's gold answers; the corpus scores are the
means times 100.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import datasets
import evaluate

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


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


class SquadMetric(evaluate.Metric):
    """SQuAD v1.1 EM / F1 in the HF input layout, without the Hub.

    predictions: ``{"id": str, "prediction_text": str}``; references: ``{"id": str,
    "answers": {"text": [str, ...], "answer_start": [int, ...]}}``. Returns
    ``{"exact_match": ..., "f1": ...}`` on a 0-100 scale. Every reference must have a
    prediction (a missing one is an error, not a silent zero).
    """

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("keep_in_memory", True)
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        answers = datasets.Sequence(
            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
        )
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
                    "references": {"id": datasets.Value("string"), "answers": answers},
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
