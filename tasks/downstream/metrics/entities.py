"""Entity-level precision, recall and F1 for tagging tasks (NER), as an offline `evaluate.Metric`.

The conlleval / seqeval definition: an entity counts as found only when a predicted chunk has
exactly the gold chunk's type, first and last word. Scores are micro-averaged over all entity
types (the headline ``f1``) and also given per type (``PER_f1``, ...), on a 0-100 scale like the
GLUE and SQuAD metrics. Invalid predicted sequences (``I-X`` after ``O`` or after another type)
are repaired the conlleval way, where the ``I-X`` starts an entity, and counted in
``repaired_tags``, so a model that emits ill-formed tags is visible in the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import datasets
import evaluate

from tasks.downstream.metrics.squad import InMemoryMetric
from tasks.downstream.tags import check_tag, chunks, to_iob2


def _prf(found: int, predicted: int, gold: int) -> tuple[float, float, float]:
    """Precision, recall, F1 (0-100); 0 where a denominator is 0, as seqeval's zero_division=0."""
    precision = found / predicted if predicted else 0.0
    recall = found / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return 100 * precision, 100 * recall, 100 * f1


def entity_scores(
    predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """The metric's numbers for sentences of tag strings (one list of word tags per sentence)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences for {len(references)} references")
    found, predicted, gold = Counter(), Counter(), Counter()
    repaired = 0
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        if len(pred) != len(ref):
            raise ValueError(f"sentence {i}: {len(pred)} predicted tags for {len(ref)} words")
        bad = next((msg for msg in map(check_tag, (*pred, *ref)) if msg), None)
        if bad:
            raise ValueError(f"sentence {i}: {bad}")
        repaired += to_iob2(pred)[1]
        pred_chunks, ref_chunks = set(chunks(pred)), set(chunks(ref))
        predicted.update(kind for kind, _, _ in pred_chunks)
        gold.update(kind for kind, _, _ in ref_chunks)
        found.update(kind for kind, _, _ in pred_chunks & ref_chunks)
    precision, recall, f1 = _prf(sum(found.values()), sum(predicted.values()), sum(gold.values()))
    scores = {"precision": precision, "recall": recall, "f1": f1, "repaired_tags": float(repaired)}
    for kind in sorted(set(gold) | set(predicted)):
        p, r, f = _prf(found[kind], predicted[kind], gold[kind])
        scores |= {
            f"{kind}_precision": p,
            f"{kind}_recall": r,
            f"{kind}_f1": f,
            f"{kind}_support": float(gold[kind]),
        }
    return scores


class EntityMetric(InMemoryMetric):
    """Entity-level P/R/F1 (micro over types, and per type) of IOB1/IOB2 tag sequences."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Entity-level P, R, F1 (conlleval): micro over types and per type, 0-100.",
            citation="Tjong Kim Sang & De Meulder, CoNLL-2003 shared task: language-independent NER, 2003.",
            inputs_description="predictions and references: one list of IOB tag strings per sentence.",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions: Sequence, references: Sequence) -> dict[str, float]:
        if len(predictions) == 0:
            raise ValueError("EntityMetric: no predictions to score")
        return entity_scores(predictions, references)
