"""GLUE metrics as an offline `evaluate.Metric`, and the GLUE average.

All scores are on a 0-100 scale (accuracy 87.5, F1 91.2, Matthews / Pearson / Spearman
correlation x 100), the way the GLUE leaderboard prints them; the whole project reports
them so, and `glue_average` averages those 0-100 numbers. The metric definitions follow
the official benchmark and use scikit-learn / scipy primitives, so nothing is fetched
from the Hub (`evaluate.load` would need a network).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from tasks.downstream.tasks import get_task


def _accuracy(preds: np.ndarray, refs: np.ndarray) -> float:
    return float(accuracy_score(refs, preds))


def _f1(preds: np.ndarray, refs: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP."""
    return float(f1_score(refs, preds, pos_label=1, zero_division=0.0))


def _matthews(preds: np.ndarray, refs: np.ndarray) -> float:
    return float(matthews_corrcoef(refs, preds))


def _correlation(fn: Callable, preds: np.ndarray, refs: np.ndarray) -> float:
    """A correlation that is 0 (not NaN) for constant input: an untrained model must not poison averages."""
    if np.ptp(preds) == 0 or np.ptp(refs) == 0:
        return 0.0
    return float(fn(preds, refs)[0])


METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _matthews,
    "pearson": lambda p, r: _correlation(pearsonr, p, r),
    "spearmanr": lambda p, r: _correlation(spearmanr, p, r),
}


class GlueMetric(evaluate.Metric):
    """The official metric(s) of one GLUE task, chosen by `config_name` (a registry name, e.g. "MRPC").

    Classification tasks take integer class indices, STS-B takes float scores. `compute`
    returns ``{metric_name: score}`` on a 0-100 scale, e.g. ``{"accuracy": 80.0, "f1": 85.7}``.
    Instances keep their buffer in memory by default (no cache files, no network).
    """

    def __init__(self, config_name: str, **kwargs: object) -> None:
        kwargs.setdefault("keep_in_memory", True)
        spec = get_task(config_name)
        if not spec.is_glue:
            raise ValueError(f"GlueMetric: {config_name!r} is not a GLUE task")
        super().__init__(config_name=config_name, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        spec = get_task(self.config_name)
        dtype = "float32" if spec.kind == "regression" else "int64"
        return evaluate.MetricInfo(
            description=f"GLUE {spec.name}: {', '.join(spec.metrics)} on a 0-100 scale.",
            citation="Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for NLU, ICLR 2019.",
            inputs_description="predictions and references: class indices (or float scores for STS-B).",
            features=datasets.Features(
                {"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}
            ),
        )

    def _compute(self, predictions: Sequence, references: Sequence) -> dict[str, float]:
        preds, refs = np.asarray(predictions), np.asarray(references)
        if len(preds) == 0:
            raise ValueError(f"GlueMetric[{self.config_name}]: no predictions to score")
        spec = get_task(self.config_name)
        return {name: 100.0 * METRIC_FNS[name](preds, refs) for name in spec.metrics}
