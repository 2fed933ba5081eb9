"""End to end: a tiny pipeline run triggered through the Prefect API against real servers.

Checks what an operator would look at: the flow run Completed, MLflow (on PostgreSQL)
holding the parent run and one FINISHED child per stage, the registered version with
its aliases, and the Prefect artifacts the stages published. A bad parameter is
rejected by the Prefect server before any run exists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from models.io import load_multitask
from registry.download import download_model

if TYPE_CHECKING:  # the fixture's type; conftest is not an importable module
    from tests.e2e.conftest import Stack, Triggered

pytestmark = pytest.mark.e2e

STAGES = {"demo-data", "ingest", "dedup", "tokenizer", "pack", "pretrain", "register"}


def test_flow_run_completes_and_mlflow_records_every_stage(stack: Stack, triggered: Triggered) -> None:
    assert triggered.state == "COMPLETED", f"flow run {triggered.flow_run_id}: {triggered.state}"
    client = MlflowClient(stack.mlflow)
    parent = client.get_run(triggered.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["pretrain.train.max_steps"] == "20"  # the UI parameter reached the config
    children = client.search_runs(
        [triggered.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{triggered.parent_run_id}'"
    )
    names = {r.info.run_name: r.info.status for r in children}
    assert STAGES | {"finetune-pretrained", "evaluate-pretrained"} == set(names)
    assert set(names.values()) == {"FINISHED"}
    assert "pretrained/glue_avg" in parent.data.metrics


def test_registered_version_has_aliases(stack: Stack, triggered: Triggered) -> None:
    client = MlflowClient(stack.mlflow)
    in_run = f"tags.mlflow.parentRunId = '{triggered.parent_run_id}'"
    register = client.search_runs(
        [triggered.experiment_id], filter_string=f"{in_run} and tags.mlflow.runName = 'register'"
    )[0]
    (mine,) = client.search_model_versions(f"run_id = '{register.info.run_id}'")
    assert str(mine.version) == "1"
    assert mine.tags["promotion_reason"].startswith("first champion")  # the gate promoted it
    latest = max(int(v.version) for v in client.search_model_versions("name = 'e2e-tiny'"))
    assert int(client.get_model_version_by_alias("e2e-tiny", "challenger").version) == latest
    assert client.get_model_version_by_alias("e2e-tiny", "champion").tags["promotion_reason"]
    files = {f.path for f in client.list_artifacts(mine.run_id, "model")}
    assert "model/model.safetensors" in files  # served through the MLflow server's artifact proxy


def test_prefect_artifacts_published(stack: Stack, triggered: Triggered) -> None:
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs()
        ids = [r.id for r in flow_runs]  # the pipeline's subflows (data, pretrain, ...) publish too
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
    keys = {a.key for a in artifacts if a.key}
    assert {"pipeline-scores", "pretrain-summary", "register-summary", "pretrain-mlflow"} <= keys


def test_bad_parameter_rejected_before_any_run(stack: Stack) -> None:
    params = {"params": {"preset": "tiny", "workdir": str(stack.workdir / "bad"), "pretrain_max_steps": 0}}
    with (
        temporary_settings({PREFECT_API_URL: stack.prefect_api}),
        pytest.raises(Exception, match="max_steps"),
    ):
        run_deployment("bertflow-pipeline/tiny", parameters=params, timeout=0, _sync=True)
    assert not (stack.workdir / "bad").exists()


def test_second_run_reuses_upstream_and_compare_cli_writes_table_and_plots(
    stack: Stack, triggered: Triggered, retriggered: Triggered, tmp_path: Path
) -> None:
    assert retriggered.state == "COMPLETED"
    client = MlflowClient(stack.mlflow)
    children = client.search_runs(
        [retriggered.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{retriggered.parent_run_id}'"
    )
    cached = {r.info.run_name: r.data.tags["bertflow.cached"] for r in children}
    assert cached["pretrain"] == "True" and cached["finetune-pretrained"] == "False"
    out = tmp_path / "comparison"
    cmd = [sys.executable, "-m", "flows.cli", "compare", "--tracking-uri", stack.mlflow]
    cmd += ["--model", "e2e-tiny", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "glue_avg" in done.stdout and "e2e-tiny v1" in done.stdout and "e2e-tiny v2" in done.stdout
    for name in ("loss_curves.png", "task_scores.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compare_run = done.stdout.rsplit("logged to MLflow run ", 1)[1].split()[0]
    logged = {f.path for f in client.list_artifacts(compare_run, "compare")}
    assert {"compare/loss_curves.png", "compare/task_scores.png", "compare/comparison.md"} <= logged


def test_compare_deployment_publishes_table_and_plots_to_prefect(
    stack: Stack, retriggered: Triggered, tmp_path: Path
) -> None:
    params = {"tracking_uri": stack.mlflow, "out_dir": str(tmp_path), "model": "e2e-tiny"}
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}):
        run = run_deployment(
            "bertflow-compare/latest", parameters=params, timeout=180, poll_interval=2, _sync=True
        )
        assert run.state is not None and run.state.is_completed(), run.state
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
    (artifact,) = [a for a in artifacts if a.key == "model-comparison"]
    assert "| glue_avg |" in artifact.data and "e2e-tiny v2" in artifact.data
    assert artifact.data.count("data:image/png;base64,") == 2


def test_export_of_the_champion_loads_in_transformers_with_our_logits(
    stack: Stack, triggered: Triggered, tmp_path: Path
) -> None:
    import transformers

    out = tmp_path / "hf"
    cmd = [sys.executable, "-m", "flows.cli", "export", "models:/e2e-tiny@champion"]
    cmd += ["--out", str(out), "--tracking-uri", stack.mlflow]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    local = download_model("models:/e2e-tiny@champion", stack.mlflow, tmp_path / "ours")
    ours = load_multitask(local).eval()
    hf = transformers.BertForSequenceClassification.from_pretrained(
        out / "SST-2", attn_implementation="eager"
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "SST-2")
    batch = tokenizer(["a short test sentence", "another one that is a little longer"], padding=True,
                      return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        expected = ours("SST-2", batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        actual = hf.eval()(**batch).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
