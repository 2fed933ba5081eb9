"""AdamW with BERT's weight-decay exclusions, and warmup + decay learning-rate schedules."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

Schedule = Literal["linear", "cosine"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters: matrices (linear and embedding weights) decay; biases and LayerNorm gains don't.

    Decaying a bias or a LayerNorm scale only pulls it towards zero without regularising capacity,
    so BERT excludes them; every 1-D parameter falls in that group.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, eps 1e-6 as in BERT); the fused kernel only when every weight is on CUDA."""
    on_cuda = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(
        param_groups(model, weight_decay),
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-6,
        fused=True if on_cuda else None,
    )


def lr_multiplier(step: int, *, max_steps: int, warmup_steps: int, schedule: Schedule) -> float:
    """Factor on the peak LR for optimizer step ``step`` (0-based): linear warmup, then decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps  # first step already trains (not lr=0)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)  # 0 -> 1 over the decay phase
    progress = min(progress, 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, max_steps: int, warmup_ratio: float, schedule: Schedule
) -> LambdaLR:
    """LambdaLR over ``lr_multiplier``; its state_dict holds only plain numbers (safe to torch.load)."""
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
    warmup_steps = math.ceil(warmup_ratio * max_steps)

    def multiplier(step: int) -> float:
        return lr_multiplier(step, max_steps=max_steps, warmup_steps=warmup_steps, schedule=schedule)

    return LambdaLR(optimizer, multiplier)
