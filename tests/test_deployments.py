"""Deployments: flat typed parameters (the UI form), their mapping onto presets, and the specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.serve import NIGHTLY, WEEKLY, build_deployments
from flows.deployed import data_deployment, pipeline_deployment, pretrain_deployment, sweep_deployment
from tasks.run.config import PresetError
from tasks.run.params import PipelineParameters
from tasks.sweep.params import SweepParameters

REPO = Path(__file__).resolve().parents[1]


def schema_properties() -> dict:
    schema = pipeline_deployment.parameters.model_dump()
    return schema["definitions"]["PipelineParameters"]["properties"]


def test_form_fields_are_flat_typed_and_described() -> None:
    props = schema_properties()
    assert props["preset"]["enum"] == ["tiny", "t5-tiny", "cpu-15m", "small", "t5-small", "base"]
    for name, prop in props.items():
        assert prop.get("description"), f"{name} has no description for the form"
        assert "object" not in {t.get("type") for t in prop.get("anyOf", [prop])}, f"{name} is a JSON blob"
    steps = next(t for t in props["pretrain_max_steps"]["anyOf"] if t.get("type") == "integer")
    assert steps["minimum"] == 1


def test_parameters_become_the_preset_with_overrides(tmp_path: Path) -> None:
    params = PipelineParameters(
        preset="tiny", workdir=str(tmp_path), pretrain_max_steps=7, finetune_lr=3e-4, model_name="m",
        tracking_uri="http://127.0.0.1:5999", overrides=["pack.seq_len=64"],
    )  # fmt: skip
    cfg = params.to_config()
    assert (cfg.pretrain.train.max_steps, cfg.finetune.train.lr, cfg.registry.model_name) == (7, 3e-4, "m")
    assert cfg.tracking.tracking_uri == "http://127.0.0.1:5999" and cfg.pack.seq_len == 64
    assert cfg.demo is not None and cfg.demo.out_dir == f"{tmp_path.resolve()}/demo-data"  # preset kept
    assert cfg.pretrain.shape.size == "tiny"  # untouched fields keep the preset's value


def test_bad_values_are_rejected_before_work(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="pretrain_max_steps"):
        PipelineParameters(workdir=str(tmp_path), pretrain_max_steps=0)
    with pytest.raises(ValidationError, match="preset"):
        PipelineParameters(workdir=str(tmp_path), preset="huge")
    with pytest.raises(ValidationError, match="max_steps"):  # a bad advanced override, named by the stage
        PipelineParameters(workdir=str(tmp_path), overrides=["finetune.train.max_steps=-3"]).to_config()
    with pytest.raises(PresetError, match=r"section\.field=value"):
        PipelineParameters(workdir=str(tmp_path), overrides=["nonsense"]).to_config()
    assert not any(tmp_path.iterdir())  # nothing was written


def test_served_deployments_have_presets_schedules_and_gpu_limits(tmp_path: Path) -> None:
    deployments = build_deployments(["tiny", "base"], tmp_path, schedules=True)
    by_key = {(d.flow_name, d.name): d for d in deployments}
    flows = ("bertflow-pipeline", "bertflow-pretrain", "bertflow-data", "bertflow-sweep")
    assert set(by_key) == {(f, p) for f in flows for p in ("tiny", "base")} | {("bertflow-compare", "latest")}
    base = by_key[("bertflow-pipeline", "base")]
    assert base.parameters == {"params": {"preset": "base", "workdir": str(tmp_path.resolve() / "base")}}
    assert base.schedules[0].schedule.cron == NIGHTLY
    pretrain = by_key[("bertflow-pretrain", "base")]
    assert pretrain.schedules[0].schedule.cron == WEEKLY and pretrain.concurrency_limit == 1
    assert "gpu" in pretrain.tags


def test_prefect_yaml_points_at_real_flows_with_valid_defaults() -> None:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    flows = {"pipeline_deployment": pipeline_deployment, "pretrain_deployment": pretrain_deployment,
             "data_deployment": data_deployment, "sweep_deployment": sweep_deployment}  # fmt: skip
    for deployment in spec["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        assert (REPO / path).is_file() and name in flows
        form = SweepParameters if flows[name] is sweep_deployment else PipelineParameters
        form.model_validate(deployment["parameters"]["params"])
        if flows[name] is not data_deployment:
            assert deployment["concurrency_limit"] == 1
    gpu = [d for d in spec["deployments"] if d["entrypoint"].endswith("pretrain_deployment")]
    assert gpu and all(d["work_pool"]["work_queue_name"] == "gpu" for d in gpu)
