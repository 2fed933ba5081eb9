"""Optimizers (AdamW, LAMB) with BERT's weight-decay exclusions, and warmup + decay LR schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

Schedule = Literal["linear", "cosine"]
OptimizerName = Literal["adamw", "lamb"]
GROUP_KEYS = frozenset({"params", "weight_decay", "lr_scale"})


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters: matrices (linear and embedding weights) decay; biases and LayerNorm gains don't.

    Decaying a bias or a LayerNorm scale only pulls it towards zero without regularising capacity,
    so BERT excludes them; every 1-D parameter falls in that group. Frozen parameters are
    included on purpose: their grad stays None so the optimizer skips them, and one unfrozen
    later (gradual unfreezing) is already in the optimizer.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def optimizer_groups(groups: Sequence[dict[str, Any]], lr: float, weight_decay: float) -> list[dict]:
    """Caller-given groups -> torch param groups with an absolute ``lr`` (peak lr x ``lr_scale``).

    The scheduler multiplies each group's own starting lr, so a group's ``lr_scale`` (layer-wise
    LR decay) holds at every step. A group without ``weight_decay`` gets the run's default.
    """
    out = []
    for i, group in enumerate(groups):
        unknown = sorted(set(group) - GROUP_KEYS)
        if unknown or "params" not in group:
            raise ValueError(
                f"param_groups[{i}]: needs 'params' and may hold only {sorted(GROUP_KEYS)}; "
                f"got {sorted(group)}"
            )
        scale = float(group.get("lr_scale", 1.0))
        if not scale >= 0:
            raise ValueError(f"param_groups[{i}]: lr_scale must be >= 0, got {scale}")
        out.append(
            {
                "params": list(group["params"]),
                "weight_decay": float(group.get("weight_decay", weight_decay)),
                "lr": lr * scale,
                "lr_scale": scale,
            }
        )
    return out


RMS_FLOOR = 1e-3  # Adafactor's epsilon2: a parameter at zero still takes steps


def rms_scaled(groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per parameter, its ``lr_scale`` multiplied by the parameter's RMS (at least 1e-3).

    Adafactor's relative step sizes (``scale_parameter``), which T5 was trained with: an update
    is a fraction of the parameter's own scale. With plain AdamW every element moves by ~lr
    whatever its scale, so T5's std-1 embedding learns ~sqrt(d_model) times slower than its
    std-d^-0.5 matrices, and the words' meanings barely form (nanoT5 scales AdamW likewise). The
    RMS is read when the optimizer is built, before a resumed run loads its state, so a resumed
    run gets the same scales as the run it continues.
    """
    out = []
    for group in groups:
        for param in group["params"]:
            rms = max(float(param.detach().float().pow(2).mean().sqrt()), RMS_FLOOR)
            out.append({**group, "params": [param], "lr_scale": float(group.get("lr_scale", 1.0)) * rms})
    return out


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    groups: Sequence[dict[str, Any]] | None = None,
    name: OptimizerName = "adamw",
    scale_by_rms: bool = False,
) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.999, eps 1e-6 as in BERT; the fused kernel where it exists) or LAMB.

    ``groups`` (see optimizer_groups) replace the default decay / no-decay split; ``scale_by_rms``
    gives every parameter Adafactor's relative step size (``rms_scaled``).
    """
    groups = groups if groups is not None else param_groups(model, weight_decay)
    torch_groups = optimizer_groups(rms_scaled(groups) if scale_by_rms else groups, lr, weight_decay)
    if name == "lamb":
        return Lamb(torch_groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)
    if name != "adamw":
        raise ValueError(f"optimizer must be 'adamw' or 'lamb', got {name!r}")
    return torch.optim.AdamW(torch_groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, fused=fusable(model) or None)


def fusable(model: nn.Module) -> bool:
    """Whether the fused AdamW kernel (one pass per tensor instead of ~8) can run: it exists for CUDA
    and, since PyTorch 2.4, CPU, and needs all (floating-point) parameters on one device type."""
    types = {p.device.type for p in model.parameters()}
    floats = all(p.is_floating_point() for p in model.parameters())
    return floats and len(types) == 1 and types <= {"cuda", "cpu"}


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2020): Adam's update rescaled per tensor by ||w|| / ||update||.

    The trust ratio lets very large batches use a large LR without the layers whose weights are
    small relative to their update diverging. Decoupled weight decay is part of the update (as in
    the paper); tensors with zero weight norm or zero update use a ratio of 1.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or eps <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lamb: invalid lr={lr}, eps={eps} or betas={betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: Tensor, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        grad = param.grad.float()
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1**step)
        v_hat = state["exp_avg_sq"] / (1 - beta2**step)
        update = m_hat / (v_hat.sqrt() + group["eps"])
        if group["weight_decay"]:
            update = update.add(param.float(), alpha=group["weight_decay"])
        w_norm, u_norm = param.float().norm(), update.norm()
        trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
        param.add_((update * trust).to(param.dtype), alpha=-group["lr"])


def lr_multiplier(step: int, *, max_steps: int, warmup_steps: int, schedule: Schedule) -> float:
    """Factor on the peak LR for optimizer step ``step`` (0-based): linear warmup, then decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps  # first step already trains (not lr=0)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)  # 0 -> 1 over the decay phase
    progress = min(progress, 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def time_multiplier(fraction: float, warmup_ratio: float, schedule: Schedule) -> float:
    """Factor on the peak LR at ``fraction`` (0..1) of a time budget: linear warmup, then decay to 0.

    The time-based twin of ``lr_multiplier`` (cramming's budgeted schedule): the clock, not
    a step count fitted in advance, says where in the schedule a run is.
    """
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction < warmup_ratio:
        return fraction / warmup_ratio
    progress = (fraction - warmup_ratio) / max(1e-12, 1.0 - warmup_ratio)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


@dataclass
class SchedulePlan:
    """The LR schedule as a callable *object*: LambdaLR saves its ``__dict__`` in the state dict.

    That is what lets a budget-fitted schedule (``total_steps`` changed once the step time is
    known) survive a resume: the fitted numbers travel in the checkpoint as plain ints/strings.
    """

    total_steps: int
    warmup_steps: int
    schedule: Schedule
    fitted: bool = False  # True once total_steps was fitted to a tokens budget

    def fit_to(self, total_steps: int, warmup_ratio: float) -> None:
        """Re-plan so the LR reaches zero after ``total_steps`` (warmup re-scaled to match)."""
        self.total_steps = max(1, total_steps)
        self.warmup_steps = math.ceil(warmup_ratio * self.total_steps)
        self.fitted = True

    def __call__(self, step: int) -> float:
        return lr_multiplier(
            step, max_steps=self.total_steps, warmup_steps=self.warmup_steps, schedule=self.schedule
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, max_steps: int, warmup_ratio: float, schedule: Schedule
) -> LambdaLR:
    """LambdaLR over a SchedulePlan; its state_dict holds only plain numbers (safe to torch.load)."""
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
    plan = SchedulePlan(max_steps, math.ceil(warmup_ratio * max_steps), schedule)
    return LambdaLR(optimizer, plan)


def schedule_plan(scheduler: LambdaLR) -> SchedulePlan:
    """The plan every group shares (build_scheduler gives each group the same object)."""
    plan = scheduler.lr_lambdas[0]
    if not isinstance(plan, SchedulePlan):
        raise TypeError("scheduler was not built by build_scheduler")
    return plan
