"""Flat run parameters for Prefect deployments: what the UI's run form shows.

The pipeline itself takes the nested ``PipelineConfig`` (one section per stage), which
Prefect would render as JSON blobs. Deployed flows take this flat model instead: the
preset (an enum of the shipped presets), the working directory, the tracking target
and the handful of knobs people actually change between runs, each typed with bounds
and a description, so the form has one field per knob. Anything else is reachable
through ``overrides`` (``section.field=value``, the CLI's ``--set``). ``to_config``
turns it into the validated ``PipelineConfig`` before any work starts, so a bad value
is rejected twice: by Prefect against the parameter schema when the run is created,
and by the stage configs' own validation before the first task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from tasks.run.config import PipelineConfig, load_config, preset_names

PresetName = Literal["tiny", "t5-tiny", "cpu-15m", "small", "t5-small", "base"]
assert set(get_args(PresetName)) == set(preset_names()), "PresetName must list deployments/presets/*.toml"

# flat field -> the preset's section.field it overrides (None = keep the preset's value)
OVERRIDES: dict[str, str] = {
    "tracking_uri": "tracking.tracking_uri",
    "experiment": "tracking.experiment",
    "model_name": "registry.model_name",
    "pretrain_max_steps": "pretrain.train.max_steps",
    "pretrain_max_minutes": "pretrain.train.max_minutes",
    "pretrain_batch_size": "pretrain.batch_size",
    "finetune_max_steps": "finetune.train.max_steps",
    "finetune_lr": "finetune.train.lr",
    "eval_max_examples_per_task": "evaluate.max_examples_per_task",
    "baseline_random_init": "baseline_random_init",
    "demo_corpus_docs": "demo.n_corpus_docs",
    "demo_train_examples": "demo.n_train",
    "demo_dev_examples": "demo.n_dev",
    "task_runner": "task_runner.kind",
    "dask_address": "task_runner.address",
    "data_workers": "task_runner.workers",
}


class PipelineParameters(BaseModel):
    """One deployed pipeline run: a preset plus typed overrides (every field is a form field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: PresetName = Field(
        "tiny",
        description="Preset in deployments/presets: tiny, t5-tiny (demos), cpu-15m, small, t5-small, base.",
    )
    workdir: str = Field(
        min_length=1, description="Working directory: stage outputs are reused from here across runs."
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (e.g. http://127.0.0.1:5000); empty: SQLite in the workdir."
    )
    experiment: str | None = Field(None, min_length=1, max_length=200, description="MLflow experiment.")
    model_name: str | None = Field(None, min_length=1, max_length=200, description="Registered model name.")
    pretrain_max_steps: int | None = Field(None, ge=1, le=10**8, description="Pre-training optimizer steps.")
    pretrain_max_minutes: float | None = Field(
        None, gt=0.0, le=60.0 * 24 * 30, description="Pre-training time budget (minutes)."
    )
    pretrain_batch_size: int | None = Field(None, ge=1, le=65536, description="Pre-training micro-batch.")
    finetune_max_steps: int | None = Field(None, ge=1, le=10**7, description="Fine-tuning optimizer steps.")
    finetune_lr: float | None = Field(None, gt=0.0, le=1.0, description="Fine-tuning peak learning rate.")
    eval_max_examples_per_task: int | None = Field(
        None, ge=1, le=10**7, description="Cap on dev examples scored per task (quick checks)."
    )
    baseline_random_init: bool | None = Field(
        None, description="Also fine-tune from random init on the same budget (transfer baseline)."
    )
    demo_corpus_docs: int | None = Field(None, ge=10, le=10**6, description="tiny: synthetic corpus size.")
    demo_train_examples: int | None = Field(None, ge=10, le=10**5, description="tiny: train examples/task.")
    demo_dev_examples: int | None = Field(None, ge=10, le=10**5, description="tiny: dev examples/task.")
    task_runner: Literal["local", "dask"] | None = Field(
        None, description="Where ingest/dedup/pack shards run: threads on the worker, or a Dask cluster."
    )
    dask_address: str | None = Field(
        None, min_length=1, max_length=300, description="dask: a running scheduler (tcp://HOST:PORT)."
    )
    data_workers: int | None = Field(
        None, ge=1, le=4096, description="Data-stage threads, or the LocalCluster's worker processes."
    )
    overrides: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Advanced: more preset overrides as section.field=value (TOML values).",
    )

    def typed_updates(self) -> dict[str, object]:
        """``section.field -> value`` for every form field that is set (typed values, no re-parsing)."""
        chosen = {path: getattr(self, name) for name, path in OVERRIDES.items()}
        return {path: value for path, value in chosen.items() if value is not None}

    def to_config(self) -> PipelineConfig:
        """The validated pipeline config (raises naming the field on a bad value).

        Typed fields are set on the preset as values; only the free-text ``overrides`` are
        parsed (as TOML, like the CLI's ``--set``).
        """
        return load_config(self.preset, Path(self.workdir), self.overrides, updates=self.typed_updates())
