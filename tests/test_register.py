"""Register stage: refuses incomplete models or reports; registers the kept model set only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.tracking import Tracker, default_tracking_uri
from tasks.judge.register import (
    RegistrationError,
    RegistryConfig,
    check_registrable,
    gate_value,
    model_dirs,
    register,
)
from tasks.store.artifact import Artifact

FILES = ("model.safetensors", "config.json", "tokenizer.json")
SUITE = {"fingerprint": "s" * 16, "tasks": ["SST-2"], "config": {"data_dir": ".", "tasks": ["SST-2"]}}


def checkpoint(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (directory / name).write_text("{}")
    return directory


def test_complete_checkpoint_passes(tmp_path: Path) -> None:
    assert check_registrable(checkpoint(tmp_path / "ck"), {"glue_avg": 71.5}, "glue_avg") == 71.5


@pytest.mark.parametrize("missing", FILES)
def test_missing_file_is_refused(tmp_path: Path, missing: str) -> None:
    ck = checkpoint(tmp_path / "ck")
    (ck / missing).unlink()
    with pytest.raises(RegistrationError, match=missing):
        check_registrable(ck, {"glue_avg": 70.0}, "glue_avg")


@pytest.mark.parametrize("report", [{}, {"glue_avg": float("nan")}, {"glue_avg": "high"}])
def test_report_without_finite_score_is_refused(tmp_path: Path, report: dict) -> None:
    with pytest.raises(RegistrationError, match="glue_avg"):
        check_registrable(checkpoint(tmp_path / "ck"), report, "glue_avg")


def test_single_task_model_set_checks_every_member(tmp_path: Path) -> None:
    ck = tmp_path / "set"
    checkpoint(ck / "per_task" / "SST-2")
    checkpoint(ck / "per_task" / "MRPC")
    (ck / "members.json").write_text(json.dumps({"SST-2": "per_task/SST-2", "MRPC": "per_task/MRPC"}))
    assert model_dirs(ck) == [ck / "per_task" / "MRPC", ck / "per_task" / "SST-2"]
    assert check_registrable(ck, {"glue_avg": 1.0}, "glue_avg") == 1.0
    (ck / "per_task" / "MRPC" / "model.safetensors").unlink()
    with pytest.raises(RegistrationError, match="MRPC"):
        check_registrable(ck, {"glue_avg": 1.0}, "glue_avg")


def test_register_logs_kept_model_but_not_other_seeds(tmp_path: Path) -> None:
    ck = checkpoint(tmp_path / "finetune" / "fp")
    checkpoint(ck / "seeds" / "1")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.json").write_text(json.dumps({"glue_avg": 55.0, "suite": SUITE}))
    tracker = Tracker(default_tracking_uri(tmp_path))
    experiment = tracker.experiment("reg", tmp_path / "artifacts")
    run_id = tracker.start_run(experiment, "register")
    art = register(
        RegistryConfig(model_name="reg-test"),
        Artifact(stage="finetune", fingerprint="a" * 16, path=str(ck)),
        Artifact(stage="evaluate", fingerprint="b" * 16, path=str(tmp_path / "report")),
        workdir=tmp_path,
        run_id=run_id,
        destination=tracker.tracking_uri,
    )
    assert art.summary["version"] == "1" and art.summary["promoted"] is True
    assert art.summary["registered_on"] == tracker.tracking_uri
    logged = {f.path for f in tracker.client.list_artifacts(run_id, "model")}
    assert logged == {f"model/{name}" for name in FILES}


def test_gate_scores_the_kept_seed_not_the_median_of_metrics() -> None:
    per_seed = {"0": {"glue_avg": 48.0}, "1": {"glue_avg": 51.0}}
    report = {"glue_avg": 50.0, "median_seed": 1, "per_seed": per_seed}
    assert gate_value(report, "glue_avg") == 51.0


def test_gate_on_one_task_metric_such_as_ner_f1() -> None:
    report = {"glue_avg": 50.0, "per_task": {"WikiANN-en": {"f1": 61.5}, "SST-2": {"accuracy": 80.0}}}
    assert gate_value(report, "WikiANN-en/f1") == 61.5
    with pytest.raises(RegistrationError, match="no finite 'WikiANN-en/precision'"):
        gate_value(report, "WikiANN-en/precision")


def test_registration_needs_a_destination(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a destination"):
        register(RegistryConfig(), Artifact(stage="f", fingerprint="a", path=str(tmp_path)),
                 Artifact(stage="e", fingerprint="b", path=str(tmp_path)), workdir=tmp_path)  # fmt: skip
