"""MLflow tracking with explicit run ids, and the champion/challenger promotion gate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from registry.model_registry import (
    CHALLENGER,
    CHAMPION,
    NotComparableError,
    Registration,
    Score,
    alias_version,
    register_and_gate,
    version_tags,
)
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


Register = Callable[..., Registration]


@pytest.fixture
def register(tracker: Tracker, experiment: str, tmp_path: Path) -> Register:
    """register(name, metric value, suite, **gate options) -> the Registration, through the real gate."""
    (tmp_path / "model.safetensors").write_bytes(b"weights")

    def run(name: str, value: float, suite: str, **gate: object) -> Registration:
        run_id = tracker.start_run(experiment, "register")
        tracker.log_files(run_id, [tmp_path / "model.safetensors"], artifact_path="model")
        options = {"min_improvement": 0.0, "rescore": lambda v: pytest.fail(f"v{v}: no re-score needed")}
        score = Score("glue_avg", value, suite)
        reg = register_and_gate(tracker, name=name, source_run_id=run_id, artifact_path="model",
                                score=score, tags={}, **{**options, **gate})  # fmt: skip
        tracker.end_run(run_id)
        return reg

    return run


def test_gate_promotes_only_improvements(tracker: Tracker, register: Register) -> None:
    r1, r2, r3 = (register("gate-test", v, "s1", min_improvement=0.5) for v in (60.0, 60.3, 61.0))
    # r2: better, by less than min_improvement
    assert [r.decision.promoted for r in (r1, r2, r3)] == [True, False, True]
    assert alias_version(tracker, "gate-test", CHAMPION) == r3.version
    assert alias_version(tracker, "gate-test", CHALLENGER) == r3.version
    tags = version_tags(tracker, "gate-test", r3.version)
    assert "beats champion v1 (60.000)" in tags["promotion_reason"]
    assert tags["bertflow.score.glue_avg.s1"] == "61.000000" and tags["bertflow.suite"] == "s1"
    assert tags["bertflow.gate.promoted"] == "True" and tags["bertflow.gate.champion_version"] == "1"
    assert version_tags(tracker, "gate-test", r2.version)["bertflow.gate.promoted"] == "False"


def test_champion_on_another_suite_is_rescored_first(tracker: Tracker, register: Register) -> None:
    """The QNLI case: a champion scored on SST-2/MRPC/STS-B is compared on QNLI, never by its old number."""
    register("suite-test", 39.5, "glue3")
    asked: list[str] = []

    def rescore(version: str) -> float:
        asked.append(version)
        return 58.0

    reg = register("suite-test", 55.3, "qnli", rescore=rescore)
    assert asked == ["1"] and not reg.decision.promoted and reg.decision.champion_rescored
    expected = "glue_avg 55.300 does not beat champion v1 (re-scored on this suite: 58.000)"
    assert reg.decision.reason == expected
    assert version_tags(tracker, "suite-test", "1")["bertflow.score.glue_avg.qnli"] == "58.000000"
    again = register("suite-test", 59.0, "qnli")
    assert again.decision.promoted and not again.decision.champion_rescored  # the re-score was recorded


def test_champion_that_cannot_be_scored_keeps_its_title(tracker: Tracker, register: Register) -> None:
    register("headless", 39.5, "glue3")

    def rescore(version: str) -> float:
        raise NotComparableError("no classification head for task 'QNLI'")

    reg = register("headless", 90.0, "qnli", rescore=rescore)
    assert not reg.decision.promoted and "cannot be scored on this suite" in reg.decision.reason
    assert "QNLI" in reg.decision.reason and alias_version(tracker, "headless", CHAMPION) == "1"


def test_challenger_below_its_own_baseline_is_not_promoted(tracker: Tracker, register: Register) -> None:
    reg = register("base-test", 55.3, "q", baseline_score=56.8)
    assert not reg.decision.promoted and alias_version(tracker, "base-test", CHAMPION) is None
    assert reg.decision.reason == "glue_avg 55.300 does not beat its own random-init baseline (56.800)"
    assert version_tags(tracker, "base-test", reg.version)["bertflow.gate.baseline_score"] == "56.800000"


def test_registry_errors_are_not_read_as_no_champion(
    tracker: Tracker, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry that fails (server down, permissions) must stop the gate, not crown a "first champion"."""
    register("flaky", 50.0, "s")

    def failing(name: str) -> None:
        raise MlflowException("backend unavailable", error_code=INTERNAL_ERROR)

    monkeypatch.setattr(tracker.client, "get_registered_model", failing)
    with pytest.raises(MlflowException, match="backend unavailable"):
        alias_version(tracker, "flaky", CHAMPION)
    with pytest.raises(MlflowException, match="backend unavailable"):
        register("flaky", 99.0, "s")


def test_an_interrupted_registration_is_finished_not_duplicated(tracker: Tracker, register: Register) -> None:
    """A register build killed after creating its version: the next attempt adopts it."""
    first = register("attempts", 70.0, "s", attempt="fp-1")
    again = register("attempts", 70.0, "s", attempt="fp-1")
    assert again.version == first.version == "1" and again.decision == first.decision
    assert register("attempts", 71.0, "s", attempt="fp-2").version == "2"


def test_a_kill_between_gate_tags_makes_the_gate_decide_again(
    tracker: Tracker, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow writes one tag per call: a kill after some gate tags must not leave a half decision.

    Seen in the fault suite: the next attempt found ``promoted`` without ``reason`` and crashed.
    """
    calls: list[str] = []
    real = tracker.client.set_model_version_tag

    def killed_after_first(name: str, version: str, key: str, value: str) -> None:
        calls.append(key)
        if key.startswith("bertflow.gate.") and sum(c.startswith("bertflow.gate.") for c in calls) > 1:
            raise KeyboardInterrupt("kill -9")  # stands in for the kill: nothing after it runs
        real(name, version, key, value)

    monkeypatch.setattr(tracker.client, "set_model_version_tag", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        register("half-tagged", 60.0, "s", attempt="fp-half")
    monkeypatch.undo()
    first_written = next(c for c in calls if c.startswith("bertflow.gate."))
    assert first_written != "bertflow.gate.promoted"  # the marker is written last
    done = register("half-tagged", 60.0, "s", attempt="fp-half")
    tags = version_tags(tracker, "half-tagged", done.version)
    assert done.version == "1" and done.decision.promoted
    assert tags["bertflow.gate.promoted"] == "True" and tags["bertflow.gate.reason"] == done.decision.reason
