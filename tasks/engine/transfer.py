"""How much of a pre-trained encoder trains during fine-tuning, and how fast.

Three standard transfer-learning knobs, all expressed through what `fit()` already
accepts (``param_groups`` with an ``lr_scale`` and a ``step_hook``):

- layer-wise learning-rate decay (ULMFiT's discriminative fine-tuning; Zhang et al. 2021,
  "Revisiting Few-sample BERT Fine-tuning"): the heads and the top transformer layer
  train at the peak LR, each layer below at ``decay`` times the one above, the embeddings
  at ``decay ** num_layers``. Lower layers hold general features that large updates
  would destroy.
- a frozen encoder (BERT's feature-based transfer, §5.3): only the heads train, and the
  encoder runs in eval mode so its features are fixed (no dropout noise).
- gradual unfreezing (ULMFiT): heads only at first, then every ``every`` steps the next
  encoder unit from the top (layer L-1, ..., layer 0, then the embeddings).

The encoder is any module with ``embeddings`` and ``layers`` (an nn.ModuleList); every
other encoder parameter (a pre-LN final norm) belongs to the top, like the heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


def encoder_depths(model: nn.Module) -> dict[str, int]:
    """Depth of every parameter name: embeddings 0, layer i -> i + 1, heads and the rest L."""
    encoder = model.encoder
    num_layers = len(encoder.layers)
    depths = {}
    for name, _ in model.named_parameters():
        depths[name] = num_layers
        if name.startswith("encoder.embeddings."):
            depths[name] = 0
        elif name.startswith("encoder.layers."):
            depths[name] = int(name.split(".")[2]) + 1
    return depths


def layerwise_param_groups(model: nn.Module, decay: float, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups for ``fit(param_groups=...)``: one per (depth, decays?) pair.

    ``lr_scale = decay ** (L - depth)``; matrices get ``weight_decay``, 1-D parameters
    (biases, LayerNorm) none, the same split BERT uses. ``decay = 1`` gives plain fine-tuning.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer-wise LR decay must be in (0, 1], got {decay}")
    depths = encoder_depths(model)
    top = len(model.encoder.layers)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        decays = param.ndim >= 2
        key = (depths[name], decays)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": weight_decay if decays else 0.0,
                "lr_scale": decay ** (top - depths[name]),
            }
        groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def unfreeze_order(model: nn.Module) -> list[nn.Module]:
    """Encoder units in the order gradual unfreezing releases them: top layer first, embeddings last."""
    return [*reversed(list(model.encoder.layers)), model.encoder.embeddings]


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(trainable)


@dataclass(frozen=True)
class FrozenEncoder:
    """Step hook: the encoder never trains and stays in eval mode (fit() puts the model in train mode)."""

    def __call__(self, step: int, model: nn.Module) -> None:
        set_trainable(model.encoder, False)
        model.encoder.eval()


@dataclass(frozen=True)
class GradualUnfreezing:
    """Step hook: before step s, the top ``s // every`` encoder units train, the rest are frozen.

    A pure function of the step, so a resumed run re-applies exactly the state it had.
    Frozen parameters keep grad None and AdamW skips them (no moment updates, no decay).
    """

    every: int

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"GradualUnfreezing.every must be >= 1, got {self.every}")

    def __call__(self, step: int, model: nn.Module) -> None:
        unfrozen = step // self.every
        for k, unit in enumerate(unfreeze_order(model)):
            set_trainable(unit, k < unfrozen)
