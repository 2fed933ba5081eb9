"""The one training loop shared by pre-training and fine-tuning.

``fit`` knows nothing about the task: an *objective* turns (model, batch) into a loss and
metrics, a *source* turns a step number into a batch, a *sink* receives metrics. Because
``source.batch(i)`` is a pure function of (seed, i), a checkpoint only needs the model,
optimizer, scheduler, RNG state and step number for a resumed run to follow exactly the same
trajectory as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from models.io import write_atomic_safetensors
from tasks.engine.optim import Schedule, build_optimizer, build_scheduler
from tasks.engine.sink import MetricSink

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"


class BatchSource(Protocol):
    def batch(self, step: int) -> dict[str, Any]:
        """The micro-batch with index ``step``; must depend only on the source's seed and ``step``."""


Objective = Callable[[nn.Module, dict[str, Any]], tuple[Tensor, dict[str, Tensor]]]


class NonFiniteLossError(ArithmeticError):
    """Training produced a NaN/inf loss (or gradient norm): stop instead of corrupting the weights."""

    def __init__(self, step: int, value: float, what: str = "loss") -> None:
        super().__init__(f"non-finite {what} ({value}) at step {step}")
        self.step = step
        self.value = value


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int
    lr: float
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: Schedule = "linear"
    grad_accum: int = 1  # micro-batches per optimizer step; source.batch(step * grad_accum + k)
    clip_norm: float = 1.0  # <= 0 disables clipping (the norm is still logged)
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 0  # 0: checkpoint only at the end (when a checkpoint_dir is given)
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    max_minutes: float | None = None  # training-time budget, summed over resumed runs
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"LoopConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(
                f"LoopConfig needs lr > 0 and 0 <= warmup_ratio <= 1, got {self.lr}, {self.warmup_ratio}"
            )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"LoopConfig.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"LoopConfig.max_minutes must be > 0 or None, got {self.max_minutes}")


@dataclass(frozen=True)
class FitResult:
    steps: int  # optimizer steps completed (including those before a resume)
    metrics: dict[str, float]  # last logged training window (empty if no step ran in this call)
    eval: dict[str, float]  # last evaluate() result (empty without evaluate)
    tokens: int  # real (non-pad) tokens trained on, over all runs
    seconds: float  # training wall-clock time, over all runs
    stopped_early: bool = False  # True when max_minutes ended training before max_steps
    resumed_from: int | None = None  # step of the checkpoint this call started from


@dataclass
class Progress:
    """What a checkpoint must remember besides weights and optimizer: the position in the run."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class Window:
    """Running sums between two log lines."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, metrics: Mapping[str, float], tokens: int) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        self.tokens += tokens

    def summary(self, lr: float) -> dict[str, float]:
        out = {name: total / self.steps for name, total in self.sums.items()}
        out["lr"] = lr
        if self.tokens:
            out["tokens_per_s"] = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        return out


def fit(
    model: nn.Module,
    objective: Objective,
    source: BatchSource,
    cfg: LoopConfig,
    sink: MetricSink,
    evaluate: Callable[[], dict[str, float]] | None = None,
    checkpoint_dir: Path | str | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps (or until the time budget), resuming if possible.

    If ``checkpoint_dir`` holds a checkpoint, training continues from it on exactly the
    trajectory an uninterrupted run would have taken. Global RNG state is forked, so the
    caller's RNG is untouched; dropout draws from a generator seeded with ``cfg.seed``.
    """
    device = next(model.parameters()).device
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(
        optimizer, max_steps=cfg.max_steps, warmup_ratio=cfg.warmup_ratio, schedule=cfg.schedule
    )
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    with torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(cfg.seed)
        progress = Progress()
        resumed_from = None
        if ckpt is not None and (ckpt / STATE_FILE).is_file():
            progress = load_training_state(ckpt, model, optimizer, scheduler, device)
            resumed_from = progress.step
            log.info("resuming from %s at step %d", ckpt, progress.step)
        loop = TrainLoop(model, objective, source, cfg, sink, evaluate, ckpt, optimizer, scheduler, device)
        return loop.run(progress, resumed_from)


@dataclass
class TrainLoop:
    """The state one fit() call works on; split out so each phase is a short method."""

    model: nn.Module
    objective: Objective
    source: BatchSource
    cfg: LoopConfig
    sink: MetricSink
    evaluate: Callable[[], dict[str, float]] | None
    ckpt: Path | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device

    # mutable state of one run (what the last log / eval / checkpoint produced)
    window: Window = field(default_factory=Window)
    metrics: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    eval_step: int = -1
    saved_step: int = -1

    def run(self, progress: Progress, resumed_from: int | None) -> FitResult:
        """Steps until max_steps or the time budget, then a final evaluate() and checkpoint."""
        cfg, stopped_early = self.cfg, False
        clock, seconds_before = time.perf_counter(), progress.seconds  # budget counts earlier runs too
        self.model.train()
        while progress.step < cfg.max_steps:
            if cfg.max_minutes is not None and progress.seconds >= cfg.max_minutes * 60:
                stopped_early = True
                log.info("time budget of %.2f min reached at step %d", cfg.max_minutes, progress.step)
                break
            lr = self.optimizer.param_groups[0]["lr"]
            step_metrics, tokens = self.train_step(progress.step)
            progress.step += 1
            progress.tokens += tokens
            self.window.add(step_metrics, tokens)
            progress.seconds = seconds_before + time.perf_counter() - clock  # what a checkpoint records
            self.after_step(progress, lr)
            progress.seconds = seconds_before + time.perf_counter() - clock  # eval/checkpoint time counts too
        if self.evaluate is not None and self.eval_step != progress.step:
            self.last_eval = self.run_evaluate(progress.step)
        if self.ckpt is not None and self.saved_step != progress.step:
            self.save(progress)
        return FitResult(
            steps=progress.step,
            metrics=self.metrics,
            eval=self.last_eval,
            tokens=progress.tokens,
            seconds=seconds_before + time.perf_counter() - clock,
            stopped_early=stopped_early,
            resumed_from=resumed_from,
        )

    def after_step(self, progress: Progress, lr: float) -> None:
        """Periodic work after an optimizer step, in this order: log, evaluate, checkpoint."""
        cfg, step = self.cfg, progress.step
        logged = step % cfg.log_every == 0 or step == cfg.max_steps
        if logged:
            self.metrics = self.window.summary(lr)
            self.sink.log_metrics(self.metrics, step)
            self.sink.progress(step, cfg.max_steps)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
            self.last_eval, self.eval_step = self.run_evaluate(step), step
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self.save(progress)
            self.saved_step = step
        if logged:  # the next window's clock starts after evaluation/checkpointing: tokens/s is training only
            self.window = Window()

    def train_step(self, step: int) -> tuple[dict[str, float], int]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean metrics, tokens)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        tokens = 0
        for micro in range(cfg.grad_accum):
            batch = self.source.batch(step * cfg.grad_accum + micro)
            tokens += count_tokens(batch)
            with autocast(self.device, cfg.precision):
                loss, metrics = self.objective(self.model, to_device(batch, self.device))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(step + 1, value)
            (loss / cfg.grad_accum).backward()
            for name, metric in {"loss": loss, **metrics}.items():
                sums[name] = sums.get(name, 0.0) + float(metric.detach()) / cfg.grad_accum
        max_norm = cfg.clip_norm if cfg.clip_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(step + 1, grad_norm, what="gradient norm")
        self.optimizer.step()
        self.scheduler.step()
        return {**sums, "grad_norm": grad_norm}, tokens

    def run_evaluate(self, step: int) -> dict[str, float]:
        """evaluate() in eval mode, without grad, on a forked RNG so training's random stream is unchanged."""
        if self.evaluate is None:
            return {}
        self.model.eval()
        fork = torch.random.fork_rng(devices=rng_devices(self.device))
        with fork, torch.no_grad(), autocast(self.device, self.cfg.precision):
            result = {name: float(value) for name, value in self.evaluate().items()}
        self.model.train()
        self.sink.log_metrics(result, step)
        return result

    def save(self, progress: Progress) -> None:
        if self.ckpt is not None:
            save_training_state(self.ckpt, self.model, self.optimizer, self.scheduler, progress)


def count_tokens(batch: Mapping[str, Any]) -> int:
    """Real tokens in a batch (non-pad when an attention mask is present); 0 if it has no input_ids."""
    if "attention_mask" in batch and isinstance(batch["attention_mask"], Tensor):
        return int(batch["attention_mask"].sum())
    ids = batch.get("input_ids")
    return ids.numel() if isinstance(ids, Tensor) else 0


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move tensors to ``device``; leave other values (e.g. a task name) alone."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


@contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast when asked for (CPU or CUDA); a no-op for fp32."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG fork_rng must save/restore (none on CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def save_training_state(
    dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
) -> None:
    """model.safetensors + trainer_state.pt, each written to a temp file and renamed into place."""
    dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic_safetensors(dir / WEIGHTS_FILE, weights, metadata={"step": str(progress.step)})
    state = {
        "step": progress.step,
        "tokens": progress.tokens,
        "seconds": progress.seconds,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    tmp = dir / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, dir / STATE_FILE)


def load_training_state(
    dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> Progress:
    """Restore everything save_training_state wrote; refuses a weights/state pair from different steps."""
    state = torch.load(dir / STATE_FILE, map_location="cpu", weights_only=True)
    weights_step = read_weights_step(dir / WEIGHTS_FILE)
    if weights_step != state["step"]:
        raise RuntimeError(
            f"{dir}: {WEIGHTS_FILE} is from step {weights_step} but {STATE_FILE} from step {state['step']} "
            "(interrupted while checkpointing); delete the directory to restart"
        )
    model.load_state_dict(load_file(str(dir / WEIGHTS_FILE), device=str(device)), strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Progress(step=state["step"], tokens=state["tokens"], seconds=state["seconds"])


def read_weights_step(path: Path) -> int | None:
    """The training step recorded in a safetensors file's metadata (None if absent)."""
    with safe_open(str(path), framework="pt") as handle:
        step = (handle.metadata() or {}).get("step")
    return int(step) if step is not None else None
