"""The whole pipeline on a shrunken tiny preset, through Prefect and MLflow, in-process.

One module-scoped run is shared by the checks: the MLflow record (parent + a child per
stage, FINISHED, lineage tags), the registry (version with an alias), a re-run that
recomputes nothing, a fine-tuning-only change that recomputes only fine-tuning onward,
and bad input that fails the run and registers nothing; ``bertflow status`` after each of
the first run (all ran), the identical re-run (all reused) and the bad input (failed).

The shared run has no random-init baseline: 20 pre-training steps teach nothing, so whether
the pre-trained model beats random init is a coin flip, and the gate (rightly) refuses to
promote a model that does not. The baseline's wiring into the gate has its own test, which
checks the decision against the two reports whichever way it goes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from flows.pipeline import PipelineResult, pipeline
from registry.model_registry import CHALLENGER, CHAMPION
from tasks.commands.status import workdir_status
from tasks.judge.register import closing_lines
from tasks.run.config import PipelineConfig, load_config

FAST = [
    "demo.n_corpus_docs=600",
    "demo.n_train=80",
    "demo.n_dev=40",
    "tokenizer.vocab_size=512",
    "pretrain.train.max_steps=20",
    "pretrain.train.eval_every=10",
    "pretrain.eval_batches=2",
    "pretrain.train.checkpoint_every=10",
    "finetune.train.max_steps=12",
    "finetune.batch_size=8",
    "evaluate.max_examples_per_task=20",
    "registry.model_name=pipeline-test",
    "baseline_random_init=false",
]
STAGES = {"demo-data", "ingest", "dedup", "tokenizer", "pack", "pretrain", "register"}
TUNE_STAGES = {"finetune-pretrained", "evaluate-pretrained"}
BASELINE_STAGES = {"finetune-random", "evaluate-random"}


def run(workdir: Path, *overrides: str) -> tuple[PipelineConfig, PipelineResult]:
    cfg = load_config("tiny", workdir, [*FAST, *overrides])
    return cfg, pipeline(config=cfg, workdir=str(workdir))


def child_runs(client: MlflowClient, parent: PipelineResult) -> dict[str, object]:
    runs = client.search_runs(
        [parent.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.parent_run_id}'"
    )
    return {r.info.run_name: r for r in runs}


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PipelineResult]:
    workdir = tmp_path_factory.mktemp("pipeline")
    return workdir, run(workdir)[1]


def test_mlflow_record(first: tuple[Path, PipelineResult]) -> None:
    workdir, result = first
    assert result.tracking_uri == f"sqlite:///{workdir.resolve() / 'mlflow.db'}"
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"] not in ("", "none")
    children = child_runs(client, result)
    assert set(children) == STAGES | TUNE_STAGES
    assert all(r.info.status == "FINISHED" for r in children.values())
    pretrain = children["pretrain"]
    assert pretrain.data.tags["bertflow.input.pack.run_id"] == children["pack"].info.run_id
    assert len(client.get_metric_history(pretrain.info.run_id, "loss")) >= 2
    assert "pretrained/glue_avg" in parent.data.metrics
    artifacts = {f.path for f in client.list_artifacts(children["dedup"].info.run_id)}
    assert {"report.json", "dropped.jsonl"} <= artifacts
    assert (workdir / "mlflow.db").is_file() and (workdir / "mlartifacts").is_dir()


def outcomes(workdir: Path) -> dict[str, str]:
    """Stage run name -> outcome, as ``bertflow status`` reads them for the last run."""
    return {s["name"]: s["outcome"] for s in workdir_status(workdir).record["stages"]}


def test_status_after_the_first_run(
    first: tuple[Path, PipelineResult], capsys: pytest.CaptureFixture
) -> None:
    workdir, result = first
    status = workdir_status(workdir)
    assert status.record["run_id"] == result.parent_run_id and status.record["outcome"] == "finished"
    assert outcomes(workdir) == dict.fromkeys(STAGES | TUNE_STAGES, "ran")
    children = child_runs(MlflowClient(result.tracking_uri), result)
    for stage in status.record["stages"]:
        run = children[stage["name"]]
        assert stage["mlflow_run_id"] == run.info.run_id
        assert stage["fingerprint"] == run.data.tags["bertflow.fingerprint"]
        assert Path(stage["artifact_path"], "manifest.json").is_file() and stage["seconds"] > 0
    assert [(v.version, v.aliases) for v in status.versions] == [("1", (CHALLENGER, CHAMPION))]
    assert main(["status", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert f"parent run {result.parent_run_id}" in out and "v1  @challenger @champion" in out
    pretrain = next(line for line in out.splitlines() if line.startswith("pretrain "))
    assert pretrain.split()[1] == "ran" and children["pretrain"].info.run_id in pretrain


def test_registered_with_alias(first: tuple[Path, PipelineResult]) -> None:
    _, result = first
    client = MlflowClient(result.tracking_uri)
    assert result.registration is not None and result.registration.summary["version"] == "1"
    assert str(client.get_model_version_by_alias("pipeline-test", CHALLENGER).version) == "1"
    assert str(client.get_model_version_by_alias("pipeline-test", CHAMPION).version) == "1"
    files = {
        f.path for f in client.list_artifacts(client.get_model_version("pipeline-test", "1").run_id, "model")
    }
    assert {"model/model.safetensors", "model/config.json", "model/tokenizer.json"} <= files


def test_rerun_recomputes_nothing(first: tuple[Path, PipelineResult]) -> None:
    workdir, _ = first
    _, again = run(workdir)
    children = child_runs(MlflowClient(again.tracking_uri), again)
    cached = {name: r.data.tags["bertflow.cached"] for name, r in children.items()}
    assert cached == dict.fromkeys(STAGES | TUNE_STAGES, "True")
    assert outcomes(workdir) == dict.fromkeys(STAGES | TUNE_STAGES, "reused")
    assert again.registration is not None and again.registration.summary["version"] == "1"
    lines = closing_lines(again.registration, again.tracking_uri)
    assert lines[0].startswith("Reused pipeline-test v1, registered on sqlite:///")
    assert "by an earlier run" in lines[0]
    assert lines[1] == "Champion of pipeline-test now: v1."


def test_changed_training_data_reruns_finetuning_with_new_scores(first: tuple[Path, PipelineResult]) -> None:
    """Flipping every SST-2 training label must not reuse the fine-tuned model or its scores."""
    workdir, _ = first
    data = workdir / "alt-data"
    shutil.copytree(workdir / "demo-data" / "data", data)
    train = data / "glue" / "SST-2" / "train.tsv"
    header, *rows = train.read_text().splitlines()
    flipped = [f"{s}\t{1 - int(label)}" for s, label in (r.rsplit("\t", 1) for r in rows)]
    overrides = (f"finetune.data_dir={data}", f"evaluate.data_dir={data}")
    _, same = run(workdir, *overrides)
    train.write_text("\n".join([header, *flipped]) + "\n")
    _, after = run(workdir, *overrides)
    children = child_runs(MlflowClient(after.tracking_uri), after)
    recomputed = {name for name, r in children.items() if r.data.tags["bertflow.cached"] == "False"}
    assert {"finetune-pretrained", "evaluate-pretrained", "register"} <= recomputed
    assert same.scores != after.scores


def test_another_task_set_rescores_the_champion_before_comparing(first: tuple[Path, PipelineResult]) -> None:
    """The QNLI case on demo tasks: a challenger scored on SST-2 only is never compared with the champion's
    average over four tasks; the champion is evaluated on SST-2 first, and the line printed says so."""
    workdir, before = first
    client = MlflowClient(before.tracking_uri)
    champion = str(client.get_registered_model("pipeline-test").aliases["champion"])
    sst2_only = ('finetune.tasks=["SST-2"]', 'evaluate.tasks=["SST-2"]')
    _, result = run(workdir, *sst2_only)
    assert result.registration is not None
    summary = result.registration.summary
    assert summary["champion_version"] == champion and summary["champion_rescored"] is True
    assert "re-scored on this suite" in summary["reason"]
    tags = client.get_model_version("pipeline-test", champion).tags
    assert tags[f"bertflow.score.glue_avg.{summary['suite']}"] == f"{summary['champion_score']:.6f}"
    assert "re-scored on this suite" in closing_lines(result.registration, result.tracking_uri)[0]


def test_new_tracking_uri_registers_there(first: tuple[Path, PipelineResult], tmp_path: Path) -> None:
    workdir, _ = first
    other = f"sqlite:///{tmp_path / 'other.db'}"
    _, result = run(workdir, f"tracking.tracking_uri={json.dumps(other)}")
    assert result.registration is not None and not result.registration.cached
    assert result.registration.summary["registered_on"] == other
    assert str(MlflowClient(other).get_model_version_by_alias("pipeline-test", CHAMPION).version) == "1"
    assert closing_lines(result.registration, other)[0].startswith(f"Registered pipeline-test v1 on {other}")


def test_finetune_change_reruns_only_downstream(first: tuple[Path, PipelineResult]) -> None:
    workdir, _ = first
    _, changed = run(workdir, "finetune.train.lr=0.0003")
    children = child_runs(MlflowClient(changed.tracking_uri), changed)
    recomputed = {name for name, r in children.items() if r.data.tags["bertflow.cached"] == "False"}
    assert recomputed == TUNE_STAGES | {"register"}


def test_bad_glue_file_fails_and_registers_nothing(
    tmp_path: Path, first: tuple[Path, PipelineResult]
) -> None:
    workdir, _ = first
    broken = tmp_path / "data"
    src = workdir / "demo-data" / "data"
    for path in src.rglob("*"):
        if path.is_file():
            dst = broken / path.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(path.read_bytes())
    train = broken / "glue" / "MRPC" / "train.tsv"
    lines = train.read_text().splitlines()
    lines[3] = "\t".join(lines[3].split("\t")[:3])  # drop two columns on line 4
    train.write_text("\n".join(lines) + "\n")
    client = MlflowClient(f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    versions_before = len(client.search_model_versions("name = 'pipeline-test'"))
    with pytest.raises(ValueError, match=r"MRPC.*train\.tsv.*line 4"):
        run(workdir, f"finetune.data_dir={broken}", f"evaluate.data_dir={broken}", "finetune.train.lr=0.0004")
    assert len(client.search_model_versions("name = 'pipeline-test'")) == versions_before
    failed = client.search_runs(
        [client.get_experiment_by_name("bertflow").experiment_id],
        filter_string="attributes.status = 'FAILED'",
    )
    assert {r.info.run_name for r in failed} >= {"pipeline-tiny", "finetune-pretrained"}
    status = workdir_status(workdir)
    assert status.record["outcome"] == "failed"
    assert outcomes(workdir) == {
        **dict.fromkeys(STAGES - {"register"}, "reused"),
        "finetune-pretrained": "failed",
    }
    failed_stage = next(s for s in status.record["stages"] if s["outcome"] == "failed")
    assert "line 4" in failed_stage["error"] and failed_stage["fingerprint"]


def test_random_init_baseline_gates_promotion(first: tuple[Path, PipelineResult]) -> None:
    """With the baseline on, the gate compares the model with its own random-init twin's report."""
    workdir, _ = first
    _, result = run(workdir, "baseline_random_init=true", "registry.model_name=pipeline-baseline")
    client = MlflowClient(result.tracking_uri)
    children = child_runs(client, result)
    assert set(children) == STAGES | TUNE_STAGES | BASELINE_STAGES
    recomputed = {name for name, r in children.items() if r.data.tags["bertflow.cached"] == "False"}
    assert recomputed == BASELINE_STAGES | {"register"}  # the pre-trained side is reused
    parent = client.get_run(result.parent_run_id).data.metrics
    assert result.registration is not None
    summary = result.registration.summary
    assert summary["baseline_score"] == pytest.approx(parent["random_init/glue_avg"])
    assert summary["score"] == pytest.approx(parent["pretrained/glue_avg"])
    beats = summary["score"] > summary["baseline_score"]
    assert summary["promoted"] is beats
    if beats:
        assert summary["reason"].startswith("first champion")
    else:
        assert summary["reason"] == (
            f"glue_avg {summary['score']:.3f} does not beat its own random-init baseline "
            f"({summary['baseline_score']:.3f})"
        )
        assert client.get_registered_model("pipeline-baseline").aliases.get(CHAMPION) is None
    tags = client.get_model_version("pipeline-baseline", summary["version"]).tags
    assert tags["bertflow.gate.baseline_score"] == f"{summary['baseline_score']:.6f}"
