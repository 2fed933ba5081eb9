"""run_stage: a stage's MLflow child run ends FINISHED, FAILED or KILLED as the stage does; the run
record says ran / reused / failed / killed; the stage's numbers reach MLflow and the terminal alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from registry.lifecycle import OWNER_TAG, WORKDIR_TAG, close_orphans
from registry.tracking import Tracker, default_tracking_uri
from tasks.engine.loop import NonFiniteLossError, TrainingInterrupted
from tasks.procs import identity, is_alive
from tasks.run.context import StageContext
from tasks.run.contract import lineage_tags, run_stage
from tasks.run.prefect_io import artifact_key
from tasks.store.artifact import Artifact
from tasks.store.stage import Job, Stage


class Cfg(BaseModel):
    model_config = ConfigDict(frozen=True)
    lr: float = 0.1


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> StageContext:
    workdir = tmp_path_factory.mktemp("stage")
    tracker = Tracker(default_tracking_uri(workdir))
    experiment = tracker.experiment("stage-test", workdir / "mlartifacts")
    parent = tracker.start_run(experiment, "pipeline")
    return StageContext(
        workdir=str(workdir),
        tracking_uri=tracker.tracking_uri,
        experiment_id=experiment,
        parent_run_id=parent,
    )


def child(ctx: StageContext, name: str):
    tracker = Tracker(ctx.tracking_uri)
    runs = tracker.client.search_runs([ctx.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    return runs[0]


def build_report(cfg: Cfg, *inputs: Artifact, out: Path, job: Job) -> dict:
    job.sink.log_metrics({"loss": 2.0}, step=1)
    (out / "report.json").write_text("{}")
    return {"rows": 3, "name": "text is not a metric"}


def diverge(cfg: Cfg, *, out: Path, job: Job) -> dict:
    raise NonFiniteLossError(step=7, value=float("nan"))


def terminate(cfg: Cfg, *, out: Path, job: Job) -> dict:
    raise TrainingInterrupted(step=3)


def train_like(cfg: Cfg, *, out: Path, job: Job) -> dict:
    """What fit() sends at a logging point."""
    job.sink.log_metrics({"loss": 2.5, "tokens_per_s": 100.0}, step=1)
    job.sink.progress(1, 1)
    return {}


def recorded(ctx: StageContext, name: str) -> dict:
    """The run record's entry of stage run ``name``."""
    record = json.loads((Path(ctx.workdir) / "runs" / f"{ctx.parent_run_id}.json").read_text())
    return next(s for s in record["stages"] if s["name"] == name)


def test_finished_run_has_params_metrics_lineage_and_files(ctx: StageContext, tmp_path: Path) -> None:
    (tmp_path / "rows.bin").write_bytes(b"\x00\x01")  # an input's bytes are part of the key: it must exist
    upstream = Artifact(stage="pack", fingerprint="f" * 16, path=str(tmp_path), producer_run_id="r0")
    stage = Stage("ok", build_report, log_files=("report.json",))
    art = run_stage(stage, Cfg(), [upstream], ctx)
    run = child(ctx, "ok")
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1"
    assert run.data.metrics == {"loss": 2.0, "rows": 3.0}
    assert run.data.tags["bertflow.input.pack.run_id"] == "r0"
    assert run.data.tags["bertflow.fingerprint"] == art.fingerprint
    assert run.data.tags["mlflow.parentRunId"] == ctx.parent_run_id
    assert run.data.tags[WORKDIR_TAG] == ctx.workdir and run.data.tags[OWNER_TAG] == identity()
    assert [f.path for f in Tracker(ctx.tracking_uri).client.list_artifacts(run.info.run_id)] == [
        "report.json"
    ]


def test_non_finite_loss_marks_failed(ctx: StageContext) -> None:
    with pytest.raises(NonFiniteLossError, match="step 7"):
        run_stage(Stage("diverged", diverge), Cfg(), [], ctx)
    assert child(ctx, "diverged").info.status == "FAILED"
    entry = recorded(ctx, "diverged")
    assert entry["outcome"] == "failed" and entry["error"].startswith("NonFiniteLossError: ")
    assert entry["mlflow_run_id"] == child(ctx, "diverged").info.run_id
    assert entry["artifact_path"] == str(Path(ctx.workdir).resolve() / "diverged" / entry["fingerprint"])


def test_sigterm_interrupt_marks_killed(ctx: StageContext) -> None:
    with pytest.raises(TrainingInterrupted, match=r"at step 3"):
        run_stage(Stage("terminated", terminate), Cfg(), [], ctx)
    assert child(ctx, "terminated").info.status == "KILLED"
    assert recorded(ctx, "terminated")["outcome"] == "killed"


def test_record_says_ran_then_reused(ctx: StageContext) -> None:
    stage = Stage("twice", build_report)
    built = run_stage(stage, Cfg(lr=0.2), [], ctx)
    first = recorded(ctx, "twice")
    assert first["outcome"] == "ran" and first["seconds"] >= 0 and first["error"] is None
    assert (first["fingerprint"], first["artifact_path"]) == (built.fingerprint, built.path)
    assert first["mlflow_run_id"] == child(ctx, "twice").info.run_id
    run_stage(stage, Cfg(lr=0.2), [], ctx)
    again = recorded(ctx, "twice")
    assert again["outcome"] == "reused" and again["fingerprint"] == built.fingerprint
    assert again["mlflow_run_id"] != first["mlflow_run_id"]


def test_numbers_reach_mlflow_and_the_terminal(ctx: StageContext, capsys: pytest.CaptureFixture) -> None:
    run_stage(Stage("shown", train_like), Cfg(), [], ctx)
    assert child(ctx, "shown").data.metrics == {"loss": 2.5, "tokens_per_s": 100.0}
    err = capsys.readouterr().err  # not a terminal here: a plain line
    assert "shown step 1/1 loss 2.5000 tokens/s 100 in 0s\n" in err and "\r" not in err


def test_orphaned_runs_of_dead_processes_are_closed(ctx: StageContext) -> None:
    tracker = Tracker(ctx.tracking_uri)
    dead = identity().rsplit(":", 2)[0] + ":999999999:1"  # this host, a pid that cannot run

    def start(name: str, workdir: str, owner: str) -> str:
        return tracker.start_run(ctx.experiment_id, name, tags={WORKDIR_TAG: workdir, OWNER_TAG: owner})

    mine, orphan = start("alive", ctx.workdir, identity()), start("orphan", ctx.workdir, dead)
    other = start("elsewhere", "/other", dead)
    assert close_orphans(tracker, ctx.experiment_id, ctx.workdir, is_alive) == [orphan]
    assert tracker.run_status(orphan) == "KILLED"
    assert tracker.run_status(mine) == tracker.run_status(other) == "RUNNING"
    for run in (mine, other):
        tracker.end_run(run)


def test_helpers() -> None:
    assert artifact_key("Finetune_Pretrained-summary") == "finetune-pretrained-summary"
    art = Artifact(stage="tokenizer", fingerprint="a" * 16, path="/t")
    assert lineage_tags([art]) == {
        "bertflow.input.tokenizer.fingerprint": "a" * 16,
        "bertflow.input.tokenizer.path": "/t",
    }
