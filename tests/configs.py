"""Stage configs from flat keyword arguments, for tests: each name goes to the section declaring it.

``pretrain_cfg(lr=1e-3, num_layers=2, batch_size=8)`` puts ``lr`` under ``train``,
``num_layers`` under ``shape`` and ``batch_size`` at the top, then validates the whole
config, as a preset would be.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from tasks.engine.settings import TrainSettings
from tasks.train.finetune_config import FinetuneConfig
from tasks.train.pretrain_config import PretrainConfig
from tasks.train.shape import EncoderShape

C = TypeVar("C", bound=BaseModel)
SECTIONS = {"train": TrainSettings, "shape": EncoderShape}


def nested(cls: type[BaseModel], flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        owners = [s for s, t in SECTIONS.items() if s in cls.model_fields and key in t.model_fields]
        section = owners[0] if owners else None
        if section is None:
            out[key] = value
        else:
            out.setdefault(section, {})[key] = value
    return out


def updated(cfg: C, **flat: Any) -> C:
    """``cfg`` with ``flat`` changes, re-validated."""
    data = cfg.model_dump()
    for key, value in nested(type(cfg), flat).items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in SECTIONS else value
    return type(cfg).model_validate(data)


def pretrain_cfg(**flat: Any) -> PretrainConfig:
    return PretrainConfig.model_validate(nested(PretrainConfig, flat))


def finetune_cfg(**flat: Any) -> FinetuneConfig:
    return FinetuneConfig.model_validate(nested(FinetuneConfig, flat))
