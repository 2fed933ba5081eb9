"""Layer-wise LR decay, frozen encoder and gradual unfreezing, through the one training loop."""

from __future__ import annotations

import pytest
import torch

from models.config import EncoderConfig
from models.heads import HeadSpec
from models.multitask import MultiTaskModel
from tasks.engine.finetune_objectives import MultiTaskObjective
from tasks.engine.loop import fit
from tasks.engine.optim import build_optimizer
from tasks.engine.settings import TrainSettings
from tasks.engine.transfer import (
    FrozenEncoder,
    GradualUnfreezing,
    layerwise_param_groups,
    unfreeze_order,
)
from tasks.sink import NullSink


def tiny_model(num_layers: int = 3) -> MultiTaskModel:
    cfg = EncoderConfig(
        vocab_size=20,
        hidden_size=16,
        num_layers=num_layers,
        num_heads=2,
        intermediate_size=32,
        max_position=16,
    )
    torch.manual_seed(0)
    return MultiTaskModel(cfg, {"A": HeadSpec("classification", 2)})


class Batches:
    def batch(self, step: int) -> dict:
        g = torch.Generator().manual_seed(step)
        return {
            "task": "A",
            "input_ids": torch.randint(5, 20, (4, 8), generator=g),
            "labels": torch.randint(0, 2, (4,), generator=g),
        }


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module, prefix: str) -> bool:
    return any(not torch.equal(before[k], v) for k, v in model.named_parameters() if k.startswith(prefix))


def test_layerwise_groups_scale_by_depth_and_cover_every_parameter() -> None:
    model = tiny_model(3)
    groups = layerwise_param_groups(model, decay=0.5, weight_decay=0.01)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert len(scale_of) == sum(1 for _ in model.parameters())  # each parameter exactly once
    expected = {"encoder.embeddings.": 0.125, "encoder.layers.0.": 0.25, "encoder.layers.1.": 0.5}
    expected |= {"encoder.layers.2.": 1.0, "heads.": 1.0}  # top layer and heads train at the peak LR
    for name, param in model.named_parameters():
        prefix = next(p for p in expected if name.startswith(p))
        assert scale_of[id(param)] == expected[prefix], name
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert all(decay_of[id(p)] == (0.01 if p.ndim >= 2 else 0.0) for p in model.parameters())
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.01, groups=groups)
    assert sorted({round(g["lr"], 8) for g in optimizer.param_groups}) == [1.25e-4, 2.5e-4, 5e-4, 1e-3]
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        layerwise_param_groups(model, decay=1.5, weight_decay=0.0)


def test_gradual_unfreezing_releases_top_layer_first() -> None:
    model, hook = tiny_model(3), GradualUnfreezing(every=2)
    units = unfreeze_order(model)
    assert units[0] is model.encoder.layers[2] and units[-1] is model.encoder.embeddings

    def trainable() -> list[bool]:
        return [all(p.requires_grad for p in u.parameters()) for u in units]

    for step, pattern in [(0, [0, 0, 0, 0]), (1, [0, 0, 0, 0]), (2, [1, 0, 0, 0]), (5, [1, 1, 0, 0])]:
        hook(step, model)
        assert trainable() == [bool(x) for x in pattern], step
    hook(100, model)
    assert all(trainable()) and all(p.requires_grad for p in model.heads.parameters())


def test_frozen_encoder_trains_heads_only() -> None:
    model = tiny_model(2)
    before = snapshot(model)
    cfg = TrainSettings(max_steps=4, lr=1e-2, warmup_ratio=0.0, log_every=2)
    fit(
        model,
        MultiTaskObjective({"A": "classification"}),
        Batches(),
        cfg,
        NullSink(),
        step_hook=FrozenEncoder(),
    )
    assert changed(before, model, "heads.") and not changed(before, model, "encoder.")
    assert not model.encoder.training  # feature extraction: no dropout in the frozen encoder


def test_gradual_unfreezing_in_fit_leaves_lower_layers_untouched() -> None:
    model = tiny_model(3)
    before = snapshot(model)
    cfg = TrainSettings(max_steps=4, lr=1e-2, warmup_ratio=0.0, log_every=2)
    groups = layerwise_param_groups(model, decay=0.9, weight_decay=0.01)
    objective = MultiTaskObjective({"A": "classification"})
    fit(model, objective, Batches(), cfg, NullSink(), param_groups=groups, step_hook=GradualUnfreezing(2))
    # steps 0-1 heads only, steps 2-3 + the top layer: layers 0-1 and the embeddings never train
    assert changed(before, model, "heads.") and changed(before, model, "encoder.layers.2.")
    assert not any(
        changed(before, model, p) for p in ("encoder.layers.0.", "encoder.layers.1.", "encoder.emb")
    )
