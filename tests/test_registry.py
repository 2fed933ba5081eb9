"""MLflow tracking with explicit run ids, and the champion/challenger promotion gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.model_registry import CHALLENGER, CHAMPION, register_and_gate, version_by_alias
from registry.tracking import (
    MlflowSink,
    Tracker,
    TrackingUnavailableError,
    default_tracking_uri,
    flatten,
)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    return Tracker(default_tracking_uri(tmp_path_factory.mktemp("mlflow")))


@pytest.fixture(scope="module")
def experiment(tracker: Tracker, tmp_path_factory: pytest.TempPathFactory) -> str:
    return tracker.experiment("test", tmp_path_factory.mktemp("artifacts"))


def test_flatten_nested_params() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}) == {"a.b": "1", "a.c.d": "x", "e": "[1, 2]"}


def test_parent_child_runs_metrics_and_status(tracker: Tracker, experiment: str, tmp_path: Path) -> None:
    parent = tracker.start_run(experiment, "pipeline")
    child = tracker.start_run(experiment, "dedup", parent_run_id=parent, tags={"bertflow.stage": "dedup"})
    sink = MlflowSink(tracker, child)
    for step in range(3):
        sink.log_metrics({"loss": 3.0 - step, "not/finite": float("nan")}, step)
    (tmp_path / "report.json").write_text("{}")
    tracker.log_files(child, [tmp_path / "report.json"])
    tracker.end_run(child, "FAILED")
    tracker.end_run(parent, "KILLED")
    run = tracker.client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert [m.value for m in tracker.client.get_metric_history(child, "loss")] == [3.0, 2.0, 1.0]
    assert "not/finite" not in run.data.metrics
    assert [f.path for f in tracker.client.list_artifacts(child)] == ["report.json"]
    assert tracker.run_status(child) == "FAILED" and tracker.run_status(parent) == "KILLED"


def test_unreachable_server_fails_fast() -> None:
    with pytest.raises(TrackingUnavailableError, match="unreachable"):
        Tracker("http://127.0.0.1:9").check_reachable()


def test_gate_promotes_only_improvements(tracker: Tracker, experiment: str, tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")

    def register(score: float) -> tuple[str, bool]:
        run = tracker.start_run(experiment, "register")
        tracker.log_files(run, [tmp_path / "model.safetensors"], artifact_path="model")
        reg = register_and_gate(
            tracker,
            name="gate-test",
            source_run_id=run,
            artifact_path="model",
            metric="glue_avg",
            score=score,
            min_improvement=0.5,
            tags={},
        )
        tracker.end_run(run)
        return reg.version, reg.promoted

    v1, promoted1 = register(60.0)
    v2, promoted2 = register(60.3)  # better, but by less than min_improvement
    v3, promoted3 = register(61.0)
    assert (promoted1, promoted2, promoted3) == (True, False, True)
    assert version_by_alias(tracker, "gate-test", CHAMPION)[0] == v3
    assert version_by_alias(tracker, "gate-test", CHALLENGER)[0] == v3
    tags = tracker.client.get_model_version("gate-test", v3).tags
    assert "beats champion" in tags["promotion_reason"] and tags["glue_avg"] == "61.000000"
    assert v1 != v2
