"""Presets -> PipelineConfig: every preset validates; overrides and errors are explicit."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.run.config import PipelineConfig, PresetError, apply_override, load_config, preset_names


def test_presets_exist_and_validate(tmp_path: Path) -> None:
    assert {"tiny", "small", "base"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name, tmp_path)
        assert isinstance(cfg, PipelineConfig) and cfg.preset == name


def test_workdir_substitution(tmp_path: Path) -> None:
    cfg = load_config("tiny", tmp_path)
    assert cfg.demo is not None and cfg.demo.out_dir == str(tmp_path.resolve() / "demo-data")
    assert all("${workdir}" not in p for p in cfg.ingest.paths)


def test_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config("tiny", tmp_path, ["pretrain.train.max_steps=7", "registry.model_name=my-model"])
    assert cfg.pretrain.train.max_steps == 7 and cfg.registry.model_name == "my-model"


def test_configs_are_frozen(tmp_path: Path) -> None:
    cfg = load_config("tiny", tmp_path)
    before = cfg.pretrain.train.max_steps
    with pytest.raises(ValidationError, match=r"max_steps\n\s+Instance is frozen"):
        cfg.pretrain.train.max_steps = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match=r"pretrain\n\s+Instance is frozen"):
        cfg.pretrain = cfg.pretrain  # type: ignore[misc]
    assert cfg.pretrain.train.max_steps == before != 3


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"pretrain\.train\.max_steps"):
        load_config("tiny", tmp_path, ["pretrain.train.max_steps=-1"])
    with pytest.raises(ValidationError, match="no_such_field"):
        load_config("tiny", tmp_path, ["dedup.no_such_field=1"])


def test_unknown_preset_and_malformed_override(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match="unknown preset"):
        load_config("nope", tmp_path)
    with pytest.raises(PresetError, match=r"section\.field=value"):
        apply_override({}, "no-equals-sign")
