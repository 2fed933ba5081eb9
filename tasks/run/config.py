"""The whole pipeline's configuration: one frozen config per stage, composed.

Presets are TOML files in ``deployments/presets/``; ``${workdir}`` inside any string is
replaced by the run's working directory so a preset can point at data the pipeline
generates (the demo) without hard-coding a machine's paths. Command-line overrides are
``section.field=value`` with the value parsed as TOML (falling back to a plain string).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.data.dedup import DedupConfig
from tasks.data.ingest import IngestConfig
from tasks.data.pack import PackConfig
from tasks.data.tokenizer import TokenizerConfig
from tasks.demo.stage import DemoConfig
from tasks.judge.evaluation import EvalConfig
from tasks.judge.register import RegistryConfig
from tasks.train.finetune_config import FinetuneConfig
from tasks.train.pretrain_config import PretrainConfig


class TrackingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; empty means sqlite:///<workdir>/mlflow.db (embedded)."
    )
    experiment: str = Field("bertflow", min_length=1, description="MLflow experiment holding the runs.")


class TaskRunnerConfig(BaseModel):
    """Where the data stages' items run. Not part of any fingerprint: the output is the same."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["local", "dask"] = Field("local", description="local: threads here; dask: a Dask cluster.")
    address: str | None = Field(
        None, description="dask: scheduler address (tcp://HOST:PORT) of a running cluster; None starts one."
    )
    workers: int | None = Field(
        None, ge=1, le=4096, description="Threads (local) or LocalCluster worker processes (None: the cores)."
    )

    @model_validator(mode="after")
    def _check(self) -> TaskRunnerConfig:
        if self.address is not None and self.kind != "dask":
            raise ValueError("task_runner.address needs kind = 'dask'")
        if self.address is not None and self.workers is not None:
            raise ValueError(
                "task_runner.workers sizes a cluster bertflow starts; an existing one has its own"
            )
        return self

    def worker_count(self) -> int:
        return self.workers or len(os.sched_getaffinity(0))


def parse_task_runner(text: str, workers: int | None = None) -> TaskRunnerConfig:
    """``local``, ``dask`` or ``dask://HOST:PORT`` (the CLI's --task-runner) -> its config."""
    if text in ("local", "dask"):
        return TaskRunnerConfig(kind=text, workers=workers)
    if text.startswith("dask://") and len(text) > len("dask://"):
        return TaskRunnerConfig(kind="dask", address="tcp://" + text.removeprefix("dask://"), workers=workers)
    raise ValueError(f"--task-runner {text!r}: expected local, dask or dask://HOST:PORT")


class PipelineConfig(BaseModel):
    """Every stage's config; each stage receives only its own section."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str = Field("custom", description="Name of the preset this config came from.")
    demo: DemoConfig | None = Field(None, description="Generate synthetic demo data first (offline demo).")
    ingest: IngestConfig
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    pack: PackConfig = PackConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig
    evaluate: EvalConfig
    registry: RegistryConfig = RegistryConfig()
    tracking: TrackingConfig = TrackingConfig()
    task_runner: TaskRunnerConfig = TaskRunnerConfig()
    baseline_random_init: bool = Field(
        False, description="Also fine-tune from random init on the same budget, to measure transfer."
    )

    @model_validator(mode="after")
    def _one_family(self) -> PipelineConfig:
        """The tokenizer carries the model family's special tokens: a mismatch would fail at pre-training."""
        if self.tokenizer.family != self.pretrain.family:
            raise ValueError(
                f"tokenizer.family={self.tokenizer.family!r} but pretrain.family={self.pretrain.family!r}: "
                "the tokenizer must carry the special tokens of the model family it feeds"
            )
        return self


class PresetError(ValueError):
    """A preset name, file or override that cannot be turned into a PipelineConfig."""


PRESETS = resources.files("deployments") / "presets"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in PRESETS.iterdir() if p.name.endswith(".toml"))


def read_preset(name_or_path: str) -> dict[str, Any]:
    """Raw TOML of a preset given by name (``tiny``) or by path to a .toml file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text = path.read_text()
    else:
        candidate = PRESETS / f"{name_or_path}.toml"
        if not candidate.is_file():
            raise PresetError(f"unknown preset {name_or_path!r}; known: {', '.join(preset_names())}")
        text = candidate.read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"preset {name_or_path}: invalid TOML: {exc}") from exc


def substitute(value: Any, workdir: Path) -> Any:
    """Replace ``${workdir}`` in every string of a nested TOML value."""
    if isinstance(value, str):
        return value.replace("${workdir}", str(workdir))
    if isinstance(value, list):
        return [substitute(v, workdir) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, workdir) for k, v in value.items()}
    return value


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``section.sub.field`` in the raw preset dict to ``value``, creating sections as needed."""
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PresetError(f"override {key!r}: {part!r} is not a section")
    node[leaf] = value


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``section.field=value`` from text (the CLI's --set): the value is parsed as TOML if it can be."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise PresetError(f"override {override!r} is not of the form section.field=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    set_path(raw, key, value)


def load_config(
    name_or_path: str,
    workdir: Path,
    overrides: Sequence[str] = (),
    updates: Mapping[str, Any] | None = None,
) -> PipelineConfig:
    """Preset + typed ``updates`` (a form's fields) + text overrides -> validated PipelineConfig.

    Validation happens once, here, on the composed config: pydantic errors name the field.
    """
    raw = read_preset(name_or_path)
    raw.setdefault("preset", Path(name_or_path).stem)
    for key, value in (updates or {}).items():
        set_path(raw, key, value)
    for override in overrides:
        apply_override(raw, override)
    return PipelineConfig.model_validate(substitute(raw, workdir.resolve()))
