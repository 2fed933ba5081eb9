"""The t5-tiny preset through the whole pipeline (Prefect + MLflow, in-process), shrunken like the tiny
preset in test_pipeline.py: T5 tokenizer, span-corruption pre-training, text-to-text fine-tuning and
evaluation, the random-init baseline, and registration through the same gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_pipeline import FAST, child_runs

from flows.pipeline import pipeline
from models.io import read_config
from tasks.run.config import load_config


def test_t5_tiny_preset_runs_every_stage_and_registers_through_the_gate(tmp_path: Path) -> None:
    overrides = [o for o in FAST if not o.startswith(("baseline_random_init", "registry.model_name"))]
    cfg = load_config("t5-tiny", tmp_path, [*overrides, "registry.model_name=pipeline-t5"])
    assert cfg.pretrain.family == "t5" and cfg.tokenizer.family == "t5" and cfg.baseline_random_init
    result = pipeline(config=cfg, workdir=str(tmp_path))

    client = MlflowClient(result.tracking_uri)
    children = child_runs(client, result)
    assert {"pretrain", "finetune-pretrained", "evaluate-pretrained", "finetune-random", "register"} <= set(
        children
    )
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert (
        result.pretrain_summary["steps"] == 20 and result.pretrain_summary["val_token_accuracy"] is not None
    )
    for label in ("pretrained", "random_init"):
        summary = result.summaries[label]
        assert {"SST-2/accuracy", "SST-2/invalid_outputs", "SQuAD/f1", "glue_avg"} <= set(summary)
    evaluate_dir = Path(children["evaluate-pretrained"].data.tags["bertflow.artifact_path"])
    rows = (evaluate_dir / "predictions" / "SST-2.jsonl").read_text().splitlines()
    assert len(rows) == 20 and {"output", "valid"} <= set(json.loads(rows[0]))

    # registered through the same gate, against its own random-init twin's report
    parent = client.get_run(result.parent_run_id).data.metrics
    assert result.registration is not None
    registered = result.registration.summary
    assert registered["version"] == "1" and registered["score"] == pytest.approx(
        parent["pretrained/glue_avg"]
    )
    assert registered["baseline_score"] == pytest.approx(parent["random_init/glue_avg"])
    assert registered["promoted"] is (registered["score"] > registered["baseline_score"])
    version = client.get_model_version("pipeline-t5", "1")
    assert version.tags["bertflow.suite.tasks"] == "SST-2,MRPC,STS-B,SQuAD"
    model_dir = Path(children["finetune-pretrained"].data.tags["bertflow.artifact_path"])
    assert read_config(model_dir)["model_type"] == "t5"
