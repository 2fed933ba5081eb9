"""compare / promote against a real (SQLite) MLflow store holding two pipeline-shaped runs.

The runs are written with the same Tracker and registry calls the pipeline uses (parent
metrics ``pretrained/...``, a ``pretrain`` child with a loss history and budget, a
``register`` child whose version went through the gate), so the readers are checked on
the record the pipeline really leaves, without spending a minute training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from registry.compare import collect, loss_history
from registry.model_registry import CHAMPION, Score, alias_version, register_and_gate, version_tags
from registry.tracking import Tracker

MODEL = "cmp-model"


def pipeline_record(tracker: Tracker, experiment_id: str, glue: float, losses: list[float]) -> str:
    """A parent run shaped like the pipeline's; with no ``losses`` its pretrain stage was reused from
    the first record's (tagged with that producer run, as run_tracked does for a cached stage)."""
    parent = tracker.start_run(experiment_id, "pipeline-tiny", tags={"bertflow.preset": "tiny"})
    tracker.log_metrics(
        parent,
        {"pretrained/glue_avg": glue, "pretrained/SST-2/accuracy": glue + 5, "pretrained/MRPC/f1": glue - 5,
         "pretrained/SQuAD/exact_match": 10.0, "pretrained/SQuAD/f1": 20.0, "random_init/glue_avg": 1.0,
         "pretrained/WikiANN-en/f1": glue - 10, "pretrained/WikiANN-en/PER_f1": 1.0,
         "pretrained/WikiANN-en/PER_support": 500.0, "pretrained/WikiANN-en/repaired_tags": 3.0},
        step=0,
    )  # fmt: skip
    producer = tracker.client.search_runs([experiment_id], "tags.mlflow.runName = 'pretrain'")
    tags = {"bertflow.fingerprint": "abcdef0123456789"}
    if not losses:
        tags["bertflow.producer_run_id"] = producer[0].info.run_id
    pretrain = tracker.start_run(experiment_id, "pretrain", parent_run_id=parent, tags=tags)
    tracker.log_params(pretrain, {"size": "tiny", "objective": "mlm"})
    for step, loss in enumerate(losses):
        tracker.log_metrics(pretrain, {"loss": loss}, step=step * 10)
    tracker.log_metrics(
        pretrain, {"steps": 20, "tokens": 40960, "seconds": 90.0, "num_parameters": 1e6}, step=0
    )
    register = tracker.start_run(experiment_id, "register", parent_run_id=parent)
    (tmp := Path(tracker.tracking_uri.removeprefix("sqlite:///")).parent / f"m-{parent}").mkdir()
    (tmp / "config.json").write_text("{}")
    tracker.log_files(register, [tmp], artifact_path="model")
    register_and_gate(tracker, name=MODEL, source_run_id=register, artifact_path="model",
                      score=Score("glue_avg", glue, "suite0"), min_improvement=0.0, tags={},
                      rescore=lambda version: pytest.fail("same suite: nothing to re-score"))  # fmt: skip
    for run in (pretrain, register, parent):
        tracker.end_run(run)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    root = tmp_path_factory.mktemp("mlflow")
    tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}")
    experiment = tracker.experiment("bertflow", root / "artifacts")
    runs = [pipeline_record(tracker, experiment, 60.0, [5.0, 4.0, 3.5]),
            pipeline_record(tracker, experiment, 70.0, [])]  # fmt: skip
    return tracker.tracking_uri, runs


def test_compare_cli_prints_table_and_writes_plots(store, tmp_path: Path, capsys) -> None:
    uri, (first, second) = store
    assert main(["compare", "--tracking-uri", uri, "--model", MODEL, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, _, row1, row2 = out.splitlines()[:4]
    for column in ("glue_avg", "squad_em", "squad_f1", "steps", "tokens", "SST-2/accuracy", "MRPC/f1"):
        assert column in header
    assert first[:8] in row1 and "cmp-model v1" in row1 and "60.00" in row1 and "20" in row1
    assert second[:8] in row2 and "cmp-model v2 @challenger @champion" in row2 and "75.00" in row2
    assert "| run | model |" in (tmp_path / "comparison.md").read_text()
    for name in ("loss_curves.png", "task_scores.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    run_id = out.rsplit("logged to MLflow run ", 1)[1].split()[0]
    tracker = Tracker(uri)
    assert tracker.client.get_run(run_id).data.tags["bertflow.compared_runs"] == f"{first},{second}"
    logged = {f.path for f in tracker.client.list_artifacts(run_id, "compare")}
    assert logged == {"compare/comparison.md", "compare/loss_curves.png", "compare/task_scores.png"}


def test_compare_by_run_ids_accepts_a_child_run(store, tmp_path: Path, capsys) -> None:
    uri, (first, _) = store
    child = Tracker(uri).client.search_runs(
        [Tracker(uri).client.get_run(first).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first}' and tags.mlflow.runName = 'pretrain'",
    )[0]
    assert main(["compare", "--tracking-uri", uri, "--runs", child.info.run_id, "--out", str(tmp_path),
                 "--no-log"]) == 0  # fmt: skip
    assert first[:8] in capsys.readouterr().out


def test_promote_moves_champion_with_reason(store, capsys) -> None:
    uri, _ = store
    tracker = Tracker(uri)
    assert alias_version(tracker, MODEL, CHAMPION) == "2"
    assert main(["promote", "--tracking-uri", uri, "--model", MODEL, "--version", "1",
                 "--reason", "v2 regressed on MRPC"]) == 0  # fmt: skip
    version = alias_version(tracker, MODEL, CHAMPION)
    assert version == "1"
    assert version_tags(tracker, MODEL, version)["promotion_reason"] == "manual: v2 regressed on MRPC"
    assert "(was 2)" in capsys.readouterr().out


def test_promote_unknown_version_fails_clearly(store, capsys) -> None:
    uri, _ = store
    assert main(["promote", "--tracking-uri", uri, "--model", MODEL, "--version", "9", "--reason", "x"]) == 1
    assert "cmp-model v9: not in the registry" in capsys.readouterr().err


def test_compare_latest_runs_of_the_experiment(store, tmp_path: Path, capsys) -> None:
    uri, (first, second) = store
    assert main(["compare", "--tracking-uri", uri, "--limit", "1", "--out", str(tmp_path), "--no-log"]) == 0
    out = capsys.readouterr().out
    assert second[:8] in out and first[:8] not in out  # the newest finished pipeline run only


def test_reused_pretraining_is_read_from_its_producer_run(store) -> None:
    uri, (first, second) = store
    rows = {r.run_id: r for r in collect(Tracker(uri), run_ids=[first, second])}
    assert rows[second].pretrain_run_id == rows[first].pretrain_run_id  # the curve of the run that trained
    assert [v for _, v in loss_history(Tracker(uri), rows[second].pretrain_run_id)] == [5.0, 4.0, 3.5]
    assert rows[second].lineage["pretrain_fp"] == "abcdef012345"


def test_task_scores_hold_dev_scores_only(store) -> None:
    """NER's per-type breakdown and counts are logged, but are not columns of the score table."""
    uri, (first, _) = store
    (row,) = collect(Tracker(uri), run_ids=[first])
    assert row.task_scores == {"SST-2/accuracy": 65.0, "MRPC/f1": 55.0, "WikiANN-en/f1": 50.0}
