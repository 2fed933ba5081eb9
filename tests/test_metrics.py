"""GLUE / SQuAD metrics against hand-computed values and against sklearn / scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from tasks.downstream.metrics.average import glue_average, glue_average_name
from tasks.downstream.metrics.glue import GlueMetric
from tasks.downstream.metrics.squad import SquadMetric, normalize_answer, token_f1


def test_cola_matthews_by_hand() -> None:
    # TP=2 (idx 0,4) FP=1 (idx 1) TN=2 (idx 2,3) FN=1 (idx 5):
    # MCC = (2*2 - 1*1) / sqrt(3*3*3*3) = 3/9 -> 33.333 on the 0-100 scale
    out = GlueMetric("CoLA").compute(predictions=[1, 1, 0, 0, 1, 0], references=[1, 0, 0, 0, 1, 1])
    assert out == {"matthews_correlation": pytest.approx(100 / 3)}


def test_mrpc_accuracy_and_f1_by_hand() -> None:
    # 3 of 4 right -> 75; TP=2 FP=1 FN=0: P=2/3 R=1 F1=2*(2/3)/(5/3)=0.8 -> 80
    out = GlueMetric("MRPC").compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    assert out == {"accuracy": pytest.approx(75.0), "f1": pytest.approx(80.0)}


def test_sst2_accuracy_by_hand() -> None:
    out = GlueMetric("SST-2").compute(predictions=[1, 0, 1, 0, 1], references=[1, 1, 1, 0, 0])
    assert out == {"accuracy": pytest.approx(60.0)}  # 3 of 5


def test_stsb_pearson_spearman_by_hand() -> None:
    # preds deviations (-3,-2,-1,6), refs deviations (-1.5,.5,-.5,1.5): cov 13, var 50 and 5
    # pearson = 13/sqrt(250) = 0.822192; ranks (1,2,3,4) vs (1,3,2,4): spearman = 1 - 6*2/(4*15) = 0.8
    out = GlueMetric("STS-B").compute(predictions=[1.0, 2.0, 3.0, 10.0], references=[1.0, 3.0, 2.0, 4.0])
    assert out["pearson"] == pytest.approx(82.2192, abs=1e-3)
    assert out["spearmanr"] == pytest.approx(80.0)


def test_constant_regression_predictions_score_zero_not_nan() -> None:
    out = GlueMetric("STS-B").compute(predictions=[2.0, 2.0, 2.0], references=[1.0, 3.0, 2.0])
    assert out == {"pearson": 0.0, "spearmanr": 0.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_glue_metrics_match_sklearn_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    preds, refs = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    qqp = GlueMetric("QQP").compute(predictions=preds, references=refs)
    assert qqp["accuracy"] == pytest.approx(100 * accuracy_score(refs, preds))
    assert qqp["f1"] == pytest.approx(100 * f1_score(refs, preds))
    cola = GlueMetric("CoLA").compute(predictions=preds, references=refs)
    assert cola["matthews_correlation"] == pytest.approx(100 * matthews_corrcoef(refs, preds))
    mnli_preds, mnli_refs = rng.integers(0, 3, 100), rng.integers(0, 3, 100)
    mnli = GlueMetric("MNLI").compute(predictions=mnli_preds, references=mnli_refs)
    assert mnli["accuracy"] == pytest.approx(100 * np.mean(mnli_preds == mnli_refs))
    x, y = rng.normal(size=50), rng.uniform(0, 5, 50)
    stsb = GlueMetric("STS-B").compute(predictions=x, references=y)
    assert stsb["pearson"] == pytest.approx(100 * pearsonr(x, y)[0], abs=1e-4)  # float32 features
    assert stsb["spearmanr"] == pytest.approx(100 * spearmanr(x, y)[0], abs=1e-4)


def test_glue_metric_rejects_non_glue_task() -> None:
    with pytest.raises(ValueError, match="not a GLUE task"):
        GlueMetric("SQuAD")


def _ref(qid: str, *texts: str) -> dict:
    return {"id": qid, "answers": {"text": list(texts), "answer_start": [0] * len(texts)}}


def test_squad_normalization() -> None:
    assert normalize_answer("  The Cat,  sat on an   ANT-hill!") == "cat sat on anthill"
    assert normalize_answer("a") == ""


def test_squad_gold_fed_back_is_perfect() -> None:
    refs = [_ref("q1", "Denver Broncos", "Broncos"), _ref("q2", "24–10"), _ref("q3", "the 50th Super Bowl")]
    preds = [{"id": r["id"], "prediction_text": r["answers"]["text"][0]} for r in refs]
    assert SquadMetric().compute(predictions=preds, references=refs) == {"exact_match": 100.0, "f1": 100.0}


def test_squad_partial_scores_by_hand() -> None:
    # q1 "the denver broncos." normalises to the gold -> EM 1 F1 1
    # q2 "Denver" vs "Denver Broncos": common 1, P=1 R=1/2 -> F1 2/3, EM 0
    # q3 "Broncos defeated Panthers" vs golds: "Carolina Panthers" P=1/3 R=1/2 -> 0.4; "xyz" -> 0; max 0.4
    refs = [
        _ref("q1", "Denver Broncos"),
        _ref("q2", "Denver Broncos"),
        _ref("q3", "Carolina Panthers", "xyz"),
    ]
    preds = [
        {"id": "q1", "prediction_text": "the denver broncos."},
        {"id": "q2", "prediction_text": "Denver"},
        {"id": "q3", "prediction_text": "Broncos defeated Panthers"},
    ]
    out = SquadMetric().compute(predictions=preds, references=refs)
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0.4) / 3)
    assert token_f1("the", "a") == 0.0  # both normalise to nothing


def test_squad_missing_prediction_is_an_error() -> None:
    with pytest.raises(ValueError, match="no prediction for question id"):
        SquadMetric().compute(
            predictions=[{"id": "q1", "prediction_text": "x"}], references=[_ref("q2", "x")]
        )


PER_TASK = {
    "CoLA": {"matthews_correlation": 40.0},
    "MRPC": {"accuracy": 80.0, "f1": 90.0},
    "STS-B": {"pearson": 70.0, "spearmanr": 80.0},
    "MNLI": {"accuracy_matched": 60.0, "accuracy_mismatched": 62.0},
    "WNLI": {"accuracy": 50.0},
    "SQuAD": {"exact_match": 10.0, "f1": 20.0},
}


def test_glue_average_inner_then_outer() -> None:
    # inner: CoLA 40, MRPC 85, STS-B 75, MNLI 61 -> (40+85+75+61)/4 = 65.25 (a flat mean would be 68.86)
    assert glue_average(PER_TASK, include_wnli=False) == pytest.approx(65.25)
    assert glue_average_name(PER_TASK, include_wnli=False) == "glue_avg[CoLA,MNLI,MRPC,STS-B]"
    # with WNLI: (261 + 50) / 5 = 62.2
    assert glue_average(PER_TASK, include_wnli=True) == pytest.approx(62.2)
    assert glue_average_name(PER_TASK, include_wnli=True) == "glue_avg[CoLA,MNLI,MRPC,STS-B,WNLI]"


def test_glue_average_errors() -> None:
    with pytest.raises(ValueError, match="no GLUE task"):
        glue_average({"SQuAD": {"f1": 1.0}}, include_wnli=True)
    with pytest.raises(ValueError, match=r"MRPC lacks \['f1'\]"):
        glue_average({"MRPC": {"accuracy": 1.0}}, include_wnli=False)
