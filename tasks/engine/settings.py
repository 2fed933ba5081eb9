"""TrainSettings: how the one training loop trains, shared by pre-training and fine-tuning.

One frozen, validated model holds the optimiser, schedule, budget, precision and
checkpointing settings; ``PretrainConfig.train`` and ``FinetuneConfig.train`` are both a
``TrainSettings`` and ``fit()`` reads it directly, so no field is copied from a stage
config into a loop config, and every value is validated once, where it is declared.

Budgets (the first one reached ends the run; ``max_steps`` always caps):
- steps: the LR schedule spans ``max_steps``.
- tokens (``max_tokens``): the schedule spans ``max_tokens / tokens per step``, read from
  the first ``calibration_steps`` batches (the data source is deterministic, so this is
  deterministic too).
- minutes (``max_minutes``): the LR is a function of the elapsed fraction of the budget,
  warm-up and decay included (as in cramming), so the run always decays to zero at the
  deadline whatever the machine's speed or load.
``timeout_minutes`` is a safety cap only: it stops a run that takes too long, with a
warning, without changing its schedule (the demo uses steps + a timeout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Precision = Literal["fp32", "bf16"]


class TrainSettings(BaseModel):
    """Optimiser, schedule, budget, precision and checkpointing of one training run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer: Literal["adamw", "lamb"] = Field("adamw", description="AdamW, or LAMB for huge batches.")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="Peak learning rate.")
    lr_scaling: Literal["none", "rms"] = Field(
        "none",
        description="rms: each parameter's lr times its RMS at the start (at least 1e-3), Adafactor's "
        "relative steps; T5 needs it with AdamW (its embeddings start at std 1).",
    )
    weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="Weight decay (not on biases/LayerNorm).")
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Share of the budget spent warming up.")
    schedule: Literal["linear", "cosine"] = Field("linear", description="Decay to zero after warmup.")
    clip_norm: float = Field(1.0, ge=0.0, le=1000.0, description="Gradient-norm clip (0: no clipping).")
    grad_accum: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_steps: int = Field(1000, ge=1, le=10**8, description="Optimizer steps (a cap when a budget is set).")
    max_tokens: int | None = Field(
        None, ge=1, le=10**15, description="Stop after this many real tokens; the schedule is fitted to it."
    )
    max_minutes: float | None = Field(
        None,
        gt=0.0,
        le=60.0 * 24 * 365,
        description="Training-time budget: the LR follows the elapsed fraction, reaching 0 at the deadline.",
    )
    timeout_minutes: float | None = Field(
        None, gt=0.0, le=60.0 * 24 * 365, description="Safety cap: stop (with a warning) after this long."
    )
    calibration_steps: int = Field(
        10, ge=1, le=10000, description="Batches read to fit the schedule to a tokens budget."
    )
    precision: Precision = Field("fp32", description="bf16 autocast (CPU or GPU) or full fp32.")
    compile: bool = Field(False, description="torch.compile the model (slow start, faster steps on GPU).")
    eval_every: int = Field(0, ge=0, le=10**8, description="Evaluate every N steps (0: only at the end).")
    checkpoint_every: int = Field(
        0, ge=0, le=10**8, description="Save resumable state every N steps (0: at the end)."
    )
    log_every: int = Field(10, ge=1, le=10**6, description="Log training metrics every N steps.")
    peak_tflops: float | None = Field(
        None, gt=0.0, le=1e6, description="Hardware peak TFLOP/s for MFU (None: estimate for the device)."
    )

    @property
    def peak_flops(self) -> float | None:
        return self.peak_tflops * 1e12 if self.peak_tflops else None


def with_defaults(data: Any, defaults: Mapping[str, Any]) -> Any:
    """A stage config's raw input with ``defaults`` under its ``train`` section (user values win).

    Each stage trains with its own default recipe (pre-training: lr 5e-4, checkpoints every
    200 steps; fine-tuning: lr 1e-4, ...) while sharing one TrainSettings type; applied as a
    ``model_validator(mode="before")`` so ``[pretrain.train] lr = 1e-3`` keeps the others.
    """
    if not isinstance(data, Mapping):
        return data
    train = data.get("train", {})
    if isinstance(train, TrainSettings):
        return data
    if not isinstance(train, Mapping):
        return data  # pydantic reports the type error
    return {**data, "train": {**defaults, **train}}
