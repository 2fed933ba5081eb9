"""run_tracked: a stage's MLflow child run ends FINISHED, FAILED or KILLED as the stage does."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from registry.tracking import Tracker, default_tracking_uri
from tasks.engine.loop import NonFiniteLossError, TrainingInterrupted
from tasks.run.contract import StageContext, artifact_key, lineage_tags, run_tracked
from tasks.sink import MetricSink
from tasks.store.artifact import Artifact, build_stage


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


def test_finished_run_has_params_metrics_lineage_and_files(ctx: StageContext) -> None:
    upstream = Artifact(stage="pack", fingerprint="f" * 16, path="/x", producer_run_id="r0")

    def compute(sink: MetricSink, run_id: str) -> Artifact:
        sink.log_metrics({"loss": 2.0}, step=1)

        def build(out: Path) -> dict:
            (out / "report.json").write_text("{}")
            return {"rows": 3, "name": "text is not a metric"}

        return build_stage(
            workdir=ctx.path,
            stage="ok",
            version="1",
            config=Cfg(),
            inputs=[upstream],
            build=build,
            run_id=run_id,
        )

    art = run_tracked(ctx, "ok", Cfg(), [upstream], compute, files=["report.json"])
    run = child(ctx, "ok")
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1"
    assert run.data.metrics == {"loss": 2.0, "rows": 3.0}
    assert run.data.tags["bertflow.input.pack.run_id"] == "r0"
    assert run.data.tags["bertflow.fingerprint"] == art.fingerprint
    assert run.data.tags["mlflow.parentRunId"] == ctx.parent_run_id
    assert [f.path for f in Tracker(ctx.tracking_uri).client.list_artifacts(run.info.run_id)] == [
        "report.json"
    ]


def test_non_finite_loss_marks_failed(ctx: StageContext) -> None:
    def compute(sink: MetricSink, run_id: str) -> Artifact:
        raise NonFiniteLossError(step=7, value=float("nan"))

    with pytest.raises(NonFiniteLossError, match="step 7"):
        run_tracked(ctx, "diverged", Cfg(), [], compute)
    assert child(ctx, "diverged").info.status == "FAILED"


def test_sigterm_interrupt_marks_killed(ctx: StageContext) -> None:
    def compute(sink: MetricSink, run_id: str) -> Artifact:
        raise TrainingInterrupted(step=3)

    with pytest.raises(TrainingInterrupted):
        run_tracked(ctx, "terminated", Cfg(), [], compute)
    assert child(ctx, "terminated").info.status == "KILLED"


def test_helpers() -> None:
    assert artifact_key("Finetune_Pretrained-summary") == "finetune-pretrained-summary"
    art = Artifact(stage="tokenizer", fingerprint="a" * 16, path="/t")
    assert lineage_tags([art]) == {
        "bertflow.input.tokenizer.fingerprint": "a" * 16,
        "bertflow.input.tokenizer.path": "/t",
    }
