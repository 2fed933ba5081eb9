"""Checkpoint directories: ``model.safetensors`` (weights, never pickle) + ``config.json``.

``config.json`` carries everything needed to rebuild the model (encoder config, head specs),
so a checkpoint dir is self-describing; stages may add their own keys via ``extra_config``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.config import EncoderConfig
from models.heads import HeadSpec
from models.multitask import MultiTaskModel
from models.pretraining import BertForMaskedLM, BertForPreTraining, ElectraForPreTraining
from models.t5 import T5ForConditionalGeneration
from models.t5_config import T5Config

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MODEL_TYPES = {
    BertForMaskedLM: "bert_mlm",
    BertForPreTraining: "bert_pretraining",  # MLM + NSP/SOP pair head
    ElectraForPreTraining: "electra",
    MultiTaskModel: "bert_multitask",
    T5ForConditionalGeneration: "t5",
}
PRETRAINING_TYPES = ("bert_mlm", "bert_pretraining", "electra")
RESERVED_KEYS = ("model_type", "encoder", "heads", "generator", "t5")


class CheckpointError(ValueError):
    """A checkpoint directory that is missing files or describes a different model."""


def save_checkpoint(dir: Path | str, model: nn.Module, extra_config: dict[str, Any] | None = None) -> None:
    """Write weights + config into ``dir`` (created if needed); each file is replaced atomically."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model_config(model)
    for key, value in (extra_config or {}).items():
        if key in RESERVED_KEYS:
            raise CheckpointError(f"extra_config may not override the reserved config.json key {key!r}")
        config[key] = value
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic_safetensors(out / WEIGHTS, state)
    tmp = out / f".{CONFIG}.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, out / CONFIG)


def write_atomic_safetensors(
    path: Path, state: Mapping[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """save_file into a sibling temp file, then rename: a crash never leaves half a weights file."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(dict(state), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def model_config(model: nn.Module) -> dict[str, Any]:
    """The config.json payload that rebuilds ``model``."""
    model_type = MODEL_TYPES.get(type(model))
    if model_type is None:
        raise CheckpointError(
            f"save_checkpoint supports {[t.__name__ for t in MODEL_TYPES]}, got {type(model).__name__}"
        )
    if isinstance(model, T5ForConditionalGeneration):  # an encoder-decoder: its own config, no heads
        return {"model_type": model_type, "t5": model.cfg.to_dict()}
    config: dict[str, Any] = {"model_type": model_type, "encoder": model.cfg.to_dict(), "heads": {}}
    if isinstance(model, MultiTaskModel):
        config["heads"] = {name: spec.to_dict() for name, spec in model.head_specs.items()}
    if isinstance(model, ElectraForPreTraining):
        config["generator"] = model.generator_cfg.to_dict()
    return config


def read_config(dir: Path | str) -> dict[str, Any]:
    """Parsed config.json of a checkpoint dir."""
    path = Path(dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; not a checkpoint directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from err
    for key in ("model_type", "t5" if config.get("model_type") == "t5" else "encoder"):
        if key not in config:
            raise CheckpointError(f"{path}: missing field {key!r}")
    return config


def read_encoder_config(dir: Path | str) -> EncoderConfig:
    """The EncoderConfig stored in a checkpoint dir (a T5 checkpoint has none: an error naming it)."""
    config = read_config(dir)
    if "encoder" not in config:
        raise CheckpointError(
            f"{Path(dir) / CONFIG}: model_type {config['model_type']!r} has no BERT encoder to fine-tune"
        )
    return EncoderConfig.from_dict(config["encoder"])


def read_weights(dir: Path | str) -> dict[str, Tensor]:
    """All tensors of a checkpoint dir, on CPU."""
    path = Path(dir) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; not a checkpoint directory")
    return load_file(str(path), device="cpu")


def load_encoder_state_dict(dir: Path | str) -> dict[str, Tensor]:
    """Only the encoder's weights (keys without the ``encoder.`` prefix), from any checkpoint type."""
    return {k[len("encoder.") :]: v for k, v in read_weights(dir).items() if k.startswith("encoder.")}


def load_pretraining(dir: Path | str) -> BertForMaskedLM | ElectraForPreTraining:
    """Rebuild the pre-training model saved in ``dir`` (MLM, MLM + pair head, or ELECTRA)."""
    config = read_config(dir)
    model_type = config["model_type"]
    if model_type not in PRETRAINING_TYPES:
        raise CheckpointError(
            f"{Path(dir) / CONFIG}: model_type is {model_type!r}, expected one of {PRETRAINING_TYPES}"
        )
    cfg = EncoderConfig.from_dict(config["encoder"])
    model: BertForMaskedLM | ElectraForPreTraining
    if model_type == "electra":
        model = ElectraForPreTraining(cfg, EncoderConfig.from_dict(config["generator"]))
    else:
        model = BertForPreTraining(cfg) if model_type == "bert_pretraining" else BertForMaskedLM(cfg)
    model.load_state_dict(read_weights(dir), strict=True)
    return model


def load_t5(dir: Path | str) -> T5ForConditionalGeneration:
    """Rebuild the T5 encoder-decoder saved in ``dir``."""
    config = read_config(dir)
    if config["model_type"] != "t5":
        raise CheckpointError(f"{Path(dir) / CONFIG}: model_type is {config['model_type']!r}, expected 't5'")
    model = T5ForConditionalGeneration(T5Config.from_dict(config["t5"]))
    model.load_state_dict(read_weights(dir), strict=True)
    return model


def load_multitask(dir: Path | str, heads: Mapping[str, HeadSpec] | None = None) -> MultiTaskModel:
    """Rebuild a MultiTaskModel.

    ``heads=None``: restore a saved multi-task checkpoint exactly (encoder + its heads).
    ``heads`` given: take the encoder from any checkpoint (pre-training or multi-task) and start
    those heads fresh: the usual way into fine-tuning.
    """
    config = read_config(dir)
    cfg = EncoderConfig.from_dict(config["encoder"])
    if heads is not None:
        model = MultiTaskModel(cfg, heads)
        model.load_encoder_state(load_encoder_state_dict(dir))
        return model
    if config["model_type"] != "bert_multitask":
        raise CheckpointError(
            f"{Path(dir) / CONFIG}: model_type is {config['model_type']!r}; pass heads= to start task heads "
            "on top of this encoder"
        )
    specs = {name: HeadSpec.from_dict(spec) for name, spec in config.get("heads", {}).items()}
    model = MultiTaskModel(cfg, specs)
    model.load_state_dict(read_weights(dir), strict=True)
    return model
