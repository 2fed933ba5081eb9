"""The one training loop shared by pre-training and fine-tuning.

``fit`` knows nothing about the task: an *objective* turns (model, batch) into a loss and
metrics, a *source* turns a step number into a batch, a *sink* receives metrics. Because
``source.batch(i)`` is a pure function of (seed, i), a checkpoint only needs the model,
optimizer, scheduler, RNG state and step number for a resumed run to follow exactly the same
trajectory as an uninterrupted one.

Budgets: training stops at ``max_steps``, or earlier at ``max_tokens`` real tokens or
``max_minutes`` of training time, and the LR schedule is fitted to whichever budget binds so
it still decays to zero at the end:
- tokens: before the first step, the mean tokens per optimizer step is read from the first
  ``calibration_steps`` batches (the source is deterministic, so this costs no training) and
  the schedule's length set to ``max_tokens / tokens_per_step`` steps.
- minutes: the first ``calibration_steps`` steps of the run are timed (everything included:
  evaluation and checkpoints inside that window too), then the schedule's length is set to
  the steps done plus the remaining time / seconds per step; the run also stops hard at the
  deadline. During calibration the schedule assumes ``max_steps`` (set it to a generous cap).
The fitted plan is saved with the scheduler, so a resumed run keeps it.

SIGTERM (e.g. ``kill``, a preempted node, Prefect cancelling) is caught between steps: the
run checkpoints and raises ``TrainingInterrupted``, a ``SystemExit`` with status 143
(128 + SIGTERM) so an uncaught one ends the process the way SIGTERM would, and the
tracking code's ``except (KeyboardInterrupt, SystemExit)`` marks the run KILLED.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from tasks.engine import distributed
from tasks.engine.checkpoint import (
    STATE_FILE,
    WEIGHTS_FILE,
    Progress,
    has_checkpoint,
    load_training_state,
    save_training_state,
)
from tasks.engine.flops import FlopsFn, default_peak_flops, flops_estimator
from tasks.engine.optim import OptimizerName, Schedule, build_optimizer, build_scheduler, schedule_plan
from tasks.sink import MetricSink, NullSink

log = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "WEIGHTS_FILE", "FitResult", "LoopConfig", "NonFiniteLossError", "fit"]


class BatchSource(Protocol):
    def batch(self, step: int) -> dict[str, Any]:
        """The micro-batch with index ``step``; must depend only on the source's seed and ``step``."""


Objective = Callable[[nn.Module, dict[str, Any]], tuple[Tensor, dict[str, Tensor]]]
StepHook = Callable[[int, nn.Module], None]  # (0-based optimizer step, model) before the step runs


class NonFiniteLossError(ArithmeticError):
    """Training produced a NaN/inf loss (or gradient norm): stop instead of corrupting the weights."""

    def __init__(self, step: int, value: float, what: str = "loss") -> None:
        super().__init__(f"non-finite {what} ({value}) at step {step}")
        self.step = step
        self.value = value


class TrainingInterrupted(SystemExit):
    """SIGTERM arrived; the run checkpointed at ``step`` and stopped (exit status 128 + signal)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + signum)
        self.step = step

    def __str__(self) -> str:
        return f"training interrupted by signal at step {self.step} (checkpoint saved)"


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
    optimizer: OptimizerName = "adamw"  # "lamb" for very large batches
    compile: bool = False  # torch.compile the model for the training steps
    max_tokens: int | None = None  # real-token budget (schedule fitted to it)
    calibration_steps: int = 10  # steps measured to fit the schedule to a tokens / minutes budget
    peak_flops: float | None = None  # hardware peak FLOP/s for MFU; None: flops.default_peak_flops

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "log_every", "calibration_steps"):
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
        for name in ("max_minutes", "max_tokens", "peak_flops"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"LoopConfig.{name} must be > 0 or None, got {value}")


@dataclass(frozen=True)
class FitResult:
    steps: int  # optimizer steps completed (including those before a resume)
    metrics: dict[str, float]  # last logged training window (empty if no step ran in this call)
    eval: dict[str, float]  # last evaluate() result (empty without evaluate)
    tokens: int  # real (non-pad) tokens trained on, over all runs (this rank's)
    seconds: float  # training wall-clock time, over all runs
    stopped_early: bool = False  # True when a tokens / minutes budget ended training before max_steps
    resumed_from: int | None = None  # step of the checkpoint this call started from
    stop_reason: str = "steps"  # steps | tokens | minutes


@dataclass
class Window:
    """Running sums between two log lines.

    Each metric is averaged over the steps that reported it: a multi-task objective reports
    ``loss/<task>`` only on that task's steps, and dividing by every step would shrink it.
    """

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, metrics: Mapping[str, float], tokens: int, flops: float = 0.0) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1
        self.steps += 1
        self.tokens += tokens
        self.flops += flops

    def summary(self, lr: float, world_size: int = 1, peak_flops: float | None = None) -> dict[str, float]:
        """Means, lr, tokens/s over all ranks and MFU (this rank's FLOP/s over one device's peak)."""
        out = {name: total / self.counts[name] for name, total in self.sums.items()}
        out["lr"] = lr
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        if self.tokens:
            out["tokens_per_s"] = self.tokens * world_size / elapsed
        if self.flops and peak_flops:
            out["mfu"] = self.flops / elapsed / peak_flops
        return out


def fit(
    model: nn.Module,
    objective: Objective,
    source: BatchSource,
    cfg: LoopConfig,
    sink: MetricSink,
    evaluate: Callable[[], dict[str, float]] | None = None,
    checkpoint_dir: Path | str | None = None,
    *,
    param_groups: Sequence[dict[str, Any]] | None = None,
    step_hook: StepHook | None = None,
    flops: FlopsFn | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps (or until a budget), resuming if possible.

    If ``checkpoint_dir`` holds a checkpoint, training continues from it on exactly the
    trajectory an uninterrupted run would have taken. Global RNG state is forked, so the
    caller's RNG is untouched; dropout draws from a generator seeded with ``cfg.seed``.

    ``param_groups``: optimizer groups (dicts with "params", optional "weight_decay" and
    "lr_scale", a factor on the scheduled LR, e.g. for layer-wise LR decay) instead of the
    default decay / no-decay split. ``step_hook(step, model)`` runs before every optimizer step
    (0-based step), e.g. to unfreeze layers; it must depend only on ``step`` so a resumed run
    re-applies the same state. Frozen parameters stay in the optimizer with grad None (skipped),
    so one unfrozen later trains from then on. ``flops(batch)``: training FLOPs of a micro-batch
    for MFU (default: flops.flops_estimator(model)).
    """
    device = next(model.parameters()).device
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, groups=param_groups, name=cfg.optimizer)
    scheduler = build_scheduler(
        optimizer, max_steps=cfg.max_steps, warmup_ratio=cfg.warmup_ratio, schedule=cfg.schedule
    )
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    rank, world_size = distributed.world()
    with torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(cfg.seed)
        progress, resumed_from = Progress(), None
        if has_checkpoint(ckpt):
            assert ckpt is not None
            progress = load_training_state(ckpt, model, optimizer, scheduler, device)
            resumed_from = progress.step
            log.info("resuming from %s at step %d", ckpt, progress.step)
        elif cfg.max_tokens is not None:
            fit_token_budget(scheduler, source, cfg, world_size)
        train_model = distributed.wrap(model, device)
        loop = TrainLoop(
            model=model,
            train_model=torch.compile(train_model) if cfg.compile else train_model,
            ddp=train_model if train_model is not model else None,
            objective=objective,
            source=source,
            cfg=cfg,
            sink=sink if rank == 0 else NullSink(),
            evaluate=evaluate,
            ckpt=ckpt if rank == 0 else None,
            optimizer=optimizer,
            scheduler=scheduler,
            device=device,
            step_hook=step_hook,
            flops=flops or flops_estimator(model),
            rank=rank,
            world_size=world_size,
            peak_flops=cfg.peak_flops or default_peak_flops(device, cfg.precision),
        )
        with termination_signals() as received:
            loop.received = received
            return loop.run(progress, resumed_from)


def fit_token_budget(
    scheduler: torch.optim.lr_scheduler.LambdaLR, source: BatchSource, cfg: LoopConfig, world_size: int
) -> None:
    """Length the schedule so it ends at ``cfg.max_tokens`` (tokens/step read from the first batches)."""
    assert cfg.max_tokens is not None
    micro = [count_tokens(source.batch(i)) for i in range(cfg.calibration_steps * cfg.grad_accum)]
    per_step = max(sum(micro) / len(micro), 1.0) * cfg.grad_accum * world_size
    plan = schedule_plan(scheduler)
    plan.fit_to(min(cfg.max_steps, math.ceil(cfg.max_tokens / per_step)), cfg.warmup_ratio)
    log.info("token budget %d: ~%.0f tokens/step -> schedule of %d steps", cfg.max_tokens, per_step,
             plan.total_steps)  # fmt: skip


@contextmanager
def termination_signals() -> Iterator[list[int]]:
    """Record SIGTERM in the returned list instead of dying; the loop checks it between steps.

    Signal handlers can only be installed from the main thread; elsewhere (e.g. a Prefect task in
    a worker thread) SIGTERM keeps its previous behaviour and a warning says so.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        log.warning("fit() runs outside the main thread: SIGTERM will not trigger a final checkpoint")
        yield received
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class TrainLoop:
    """The state one fit() call works on; split out so each phase is a short method."""

    model: nn.Module  # the plain model: checkpoints, evaluation, hooks
    train_model: nn.Module  # what the objective runs: the model, its DDP wrapper and/or compiled form
    ddp: nn.Module | None  # the DDP wrapper (for no_sync) or None
    objective: Objective
    source: BatchSource
    cfg: LoopConfig
    sink: MetricSink
    evaluate: Callable[[], dict[str, float]] | None
    ckpt: Path | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    step_hook: StepHook | None = None
    flops: FlopsFn | None = None
    rank: int = 0
    world_size: int = 1
    peak_flops: float | None = None
    received: list[int] = field(default_factory=list)  # signals caught since the run started

    # mutable state of one run (what the last log / eval / checkpoint produced)
    window: Window = field(default_factory=Window)
    metrics: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    eval_step: int = -1
    saved_step: int = -1

    @property
    def total_steps(self) -> int:
        """Where the LR schedule ends: max_steps, or the step count fitted to a budget."""
        return min(self.cfg.max_steps, schedule_plan(self.scheduler).total_steps)

    def run(self, progress: Progress, resumed_from: int | None) -> FitResult:
        """Steps until a budget ends the run, then a final evaluate() and checkpoint."""
        clock, seconds_before = time.perf_counter(), progress.seconds  # budget counts earlier runs too
        first_step = progress.step
        self.model.train()
        while (reason := self.stop_reason(progress)) is None:
            lr = self.cfg.lr * schedule_plan(self.scheduler)(self.scheduler.last_epoch)  # before lr_scale
            step_metrics, tokens, flops = self.train_step(progress.step)
            progress.step += 1
            progress.tokens += tokens
            self.window.add(step_metrics, tokens, flops)
            progress.seconds = seconds_before + time.perf_counter() - clock  # what a checkpoint records
            if progress.step - first_step == self.cfg.calibration_steps:
                self.fit_time_budget(progress, time.perf_counter() - clock)
            self.after_step(progress, lr)
            progress.seconds = seconds_before + time.perf_counter() - clock  # eval/checkpoint time counts too
        if reason == "signal":
            self.save(progress)
            raise TrainingInterrupted(progress.step, self.received[0] if self.received else signal.SIGTERM)
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
            stopped_early=reason in ("tokens", "minutes") and progress.step < self.cfg.max_steps,
            resumed_from=resumed_from,
            stop_reason=reason,
        )

    def stop_reason(self, progress: Progress) -> str | None:
        """Why training must stop before the next step (None: go on). Agreed across DDP ranks."""
        cfg = self.cfg
        if distributed.any_rank(bool(self.received), self.device):
            log.warning("termination signal: checkpointing at step %d and stopping", progress.step)
            return "signal"
        if progress.step >= self.total_steps:
            fitted = schedule_plan(self.scheduler).fitted and self.total_steps < cfg.max_steps
            return ("minutes" if cfg.max_minutes is not None else "tokens") if fitted else "steps"
        if cfg.max_tokens is not None and progress.tokens * self.world_size >= cfg.max_tokens:
            return "tokens"
        late = cfg.max_minutes is not None and progress.seconds >= cfg.max_minutes * 60
        if distributed.any_rank(late, self.device):
            log.info("time budget of %.2f min reached at step %d", cfg.max_minutes, progress.step)
            return "minutes"
        return None

    def fit_time_budget(self, progress: Progress, elapsed: float) -> None:
        """After the calibration steps: length the schedule so it ends at the minutes deadline."""
        plan = schedule_plan(self.scheduler)
        if self.cfg.max_minutes is None or plan.fitted:
            return
        per_step = elapsed / self.cfg.calibration_steps
        remaining = self.cfg.max_minutes * 60 - progress.seconds
        total = progress.step + max(0, math.floor(remaining / per_step))
        plan.fit_to(min(self.cfg.max_steps, total), self.cfg.warmup_ratio)
        log.info("time budget: %.3f s/step -> schedule of %d steps", per_step, plan.total_steps)

    def after_step(self, progress: Progress, lr: float) -> None:
        """Periodic work after an optimizer step, in this order: log, evaluate, checkpoint."""
        cfg, step, total = self.cfg, progress.step, self.total_steps
        logged = step % cfg.log_every == 0 or step >= total
        if logged:
            self.metrics = self.window.summary(lr, self.world_size, self.peak_flops)
            self.sink.log_metrics(self.metrics, step)
            self.sink.progress(step, total)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            self.last_eval, self.eval_step = self.run_evaluate(step), step
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self.save(progress)
            self.saved_step = step
        if logged:  # the next window's clock starts after evaluation/checkpointing: tokens/s is training only
            self.window = Window()

    def train_step(self, step: int) -> tuple[dict[str, float], int, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean metrics, tokens, FLOPs)."""
        cfg = self.cfg
        if self.step_hook is not None:
            self.step_hook(step, self.model)
        self.optimizer.zero_grad(set_to_none=True)
        reported: dict[str, list[Tensor]] = {}
        tokens, flops = 0, 0.0
        for micro in range(cfg.grad_accum):
            batch = self.source.batch((step * cfg.grad_accum + micro) * self.world_size + self.rank)
            tokens += count_tokens(batch)
            flops += self.flops(batch) if self.flops is not None else 0.0
            last = micro == cfg.grad_accum - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()  # type: ignore[operator]
            with sync:
                with autocast(self.device, cfg.precision):
                    loss, metrics = self.objective(self.train_model, to_device(batch, self.device))
                (loss / cfg.grad_accum).backward()
            for name, metric in {"loss": loss, **metrics}.items():  # mean over the micro-batches reporting it
                reported.setdefault(name, []).append(torch.as_tensor(metric).detach().float().to(loss.device))
        max_norm = cfg.clip_norm if cfg.clip_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        means = self.read_metrics(reported, grad_norm, step)  # the one host sync of the step
        self.optimizer.step()
        self.scheduler.step()
        return means, tokens, flops

    def read_metrics(
        self, reported: dict[str, list[Tensor]], grad_norm: Tensor, step: int
    ) -> dict[str, float]:
        """Means of the reported metrics + grad norm as floats; refuses non-finite loss / norm."""
        names = list(reported)
        values = torch.stack(
            [torch.stack(v).mean() for v in reported.values()] + [grad_norm.float()]
        ).tolist()
        means = dict(zip([*names, "grad_norm"], values, strict=True))
        if not math.isfinite(means["loss"]):
            raise NonFiniteLossError(step + 1, means["loss"])
        if not math.isfinite(means["grad_norm"]):
            raise NonFiniteLossError(step + 1, means["grad_norm"], what="gradient norm")
        return means

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
