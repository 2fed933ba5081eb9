"""The one training loop shared by pre-training and fine-tuning.

``fit`` knows nothing about the task: an *objective* turns (model, batch) into a loss and
metrics, a *source* turns a step number into a batch, a *sink* receives metrics. Because
``source.batch(i)`` is a pure function of (seed, i), a checkpoint only needs the model,
optimizer, scheduler, RNG state and step number for a resumed run to follow exactly the same
trajectory as an uninterrupted one.

Budgets (see ``settings.TrainSettings``): training stops at ``max_steps``, or earlier at
``max_tokens`` real tokens or ``max_minutes`` of training time, and the LR schedule always
reaches zero at the end of the budget that binds:
- steps / tokens: a step-indexed schedule, its length fitted to the token budget from the
  first ``calibration_steps`` batches (deterministic: the source is).
- minutes: the LR is a function of the elapsed fraction of the budget (warm-up and decay
  included), measured before every step, so it decays to zero exactly at the deadline
  however fast or loaded the machine is. The elapsed time is saved with each checkpoint,
  so a resumed run continues on the same clock.
``timeout_minutes`` only stops a run that overruns (with a warning), e.g. a step-budget demo.

SIGTERM (e.g. ``kill``, a preempted node, Prefect cancelling) is caught between steps: the
run checkpoints and raises ``TrainingInterrupted``, a ``SystemExit`` with status 143
(128 + SIGTERM) so an uncaught one ends the process the way SIGTERM would, and the
tracking code's ``except (KeyboardInterrupt, SystemExit)`` marks the run KILLED.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
from tasks.engine.device import autocast, precision_warning, rng_devices, to_device
from tasks.engine.flops import FlopsFn, default_peak_flops, flops_estimator
from tasks.engine.optim import build_optimizer, build_scheduler, schedule_plan, time_multiplier
from tasks.engine.settings import TrainSettings
from tasks.engine.signals import TrainingInterrupted, termination_signals
from tasks.engine.window import Window, count_tokens
from tasks.sink import MetricSink, NullSink

log = logging.getLogger(__name__)

__all__ = [
    "STATE_FILE",
    "WEIGHTS_FILE",
    "FitResult",
    "NonFiniteLossError",
    "TrainSettings",
    "TrainingInterrupted",
    "fit",
]


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


@dataclass(frozen=True)
class FitResult:
    steps: int  # optimizer steps completed (including those before a resume)
    metrics: dict[str, float]  # last logged training window (empty if no step ran in this call)
    eval: dict[str, float]  # last evaluate() result (empty without evaluate)
    tokens: int  # real (non-pad) tokens trained on, over all runs and all ranks
    seconds: float  # training wall-clock time, over all runs
    stopped_early: bool = False  # a tokens / minutes budget or the timeout ended it before max_steps
    resumed_from: int | None = None  # step of the checkpoint this call started from
    stop_reason: str = "steps"  # steps | tokens | minutes | timeout


def fit(
    model: nn.Module,
    objective: Objective,
    source: BatchSource,
    cfg: TrainSettings,
    sink: MetricSink,
    evaluate: Callable[[], dict[str, float]] | None = None,
    checkpoint_dir: Path | str | None = None,
    *,
    seed: int = 0,
    param_groups: Sequence[dict[str, Any]] | None = None,
    step_hook: StepHook | None = None,
    flops: FlopsFn | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps (or until a budget), resuming if possible.

    If ``checkpoint_dir`` holds a checkpoint, training continues from it on exactly the
    trajectory an uninterrupted run would have taken. Global RNG state is forked, so the
    caller's RNG is untouched; dropout draws from a generator seeded with ``seed``.

    ``param_groups``: optimizer groups (dicts with "params", optional "weight_decay" and
    "lr_scale", a factor on the scheduled LR, e.g. for layer-wise LR decay) instead of the
    default decay / no-decay split. ``step_hook(step, model)`` runs before every optimizer step
    (0-based step), e.g. to unfreeze layers; it must depend only on ``step`` so a resumed run
    re-applies the same state. Frozen parameters stay in the optimizer with grad None (skipped),
    so one unfrozen later trains from then on. ``flops(batch)``: training FLOPs of a micro-batch
    for MFU (default: flops.flops_estimator(model)).
    """
    device = next(model.parameters()).device
    if (warning := precision_warning(device, cfg.precision)) is not None:
        log.warning(warning)  # a warning, not an error: the results are right, only slow
    optimizer = build_optimizer(
        model, cfg.lr, cfg.weight_decay, groups=param_groups, name=cfg.optimizer,
        scale_by_rms=cfg.lr_scaling == "rms",
    )  # fmt: skip
    scheduler = build_scheduler(
        optimizer, max_steps=cfg.max_steps, warmup_ratio=cfg.warmup_ratio, schedule=cfg.schedule
    )
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    rank, world_size = distributed.world()
    with torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(seed)
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
            evaluate=evaluate if rank == 0 else None,  # no collectives inside: the others wait
            ckpt=ckpt if rank == 0 else None,
            optimizer=optimizer,
            scheduler=scheduler,
            device=device,
            step_hook=step_hook,
            flops=flops or flops_estimator(model),
            rank=rank,
            world_size=world_size,
            peak_flops=cfg.peak_flops or default_peak_flops(device, cfg.precision),
            # peak lr of each group (x its lr_scale): LambdaLR has already scaled group["lr"] by the
            # schedule's step-0 factor, so reading it back would start a minutes budget ~1/warmup too low
            base_lrs=list(scheduler.base_lrs),
        )
        with termination_signals() as received:
            loop.received = received
            return loop.run(progress, resumed_from)


def fit_token_budget(
    scheduler: torch.optim.lr_scheduler.LambdaLR, source: BatchSource, cfg: TrainSettings, world_size: int
) -> None:
    """Length the schedule so it ends at ``cfg.max_tokens`` (tokens/step read from the first batches)."""
    assert cfg.max_tokens is not None
    micro = [count_tokens(source.batch(i)) for i in range(cfg.calibration_steps * cfg.grad_accum)]
    per_step = max(sum(micro) / len(micro), 1.0) * cfg.grad_accum * world_size
    plan = schedule_plan(scheduler)
    plan.fit_to(min(cfg.max_steps, math.ceil(cfg.max_tokens / per_step)), cfg.warmup_ratio)
    log.info("token budget %d: ~%.0f tokens/step -> schedule of %d steps", cfg.max_tokens, per_step,
             plan.total_steps)  # fmt: skip


@dataclass
class TrainLoop:
    """The state one fit() call works on; split out so each phase is a short method."""

    model: nn.Module  # the plain model: checkpoints, evaluation, hooks
    train_model: nn.Module  # what the objective runs: the model, its DDP wrapper and/or compiled form
    ddp: nn.Module | None  # the DDP wrapper (for no_sync) or None
    objective: Objective
    source: BatchSource
    cfg: TrainSettings
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
    base_lrs: list[float] = field(default_factory=list)  # each group's peak lr (x its lr_scale)
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
        self.model.train()
        while (reason := self.stop_reason(progress)) is None:
            lr = self.cfg.lr * self.lr_factor(progress)  # before each group's lr_scale
            step_metrics, tokens, flops = self.train_step(progress.step)
            progress.step += 1
            progress.tokens += tokens
            self.window.add(step_metrics, tokens, flops)
            progress.seconds = seconds_before + time.perf_counter() - clock  # what a checkpoint records
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
            stopped_early=reason in ("tokens", "minutes", "timeout") and progress.step < self.cfg.max_steps,
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
            return "tokens" if fitted else "steps"
        if cfg.max_tokens is not None and progress.tokens >= cfg.max_tokens:  # all ranks' tokens: agreed
            return "tokens"
        late = cfg.max_minutes is not None and progress.seconds >= cfg.max_minutes * 60
        if distributed.any_rank(late, self.device):
            log.info("time budget of %.2f min reached at step %d", cfg.max_minutes, progress.step)
            return "minutes"
        overrun = cfg.timeout_minutes is not None and progress.seconds >= cfg.timeout_minutes * 60
        if distributed.any_rank(overrun, self.device):
            log.warning("timeout of %.2f min reached at step %d of %d: stopping early, the schedule "
                        "did not finish", cfg.timeout_minutes, progress.step, self.total_steps)  # fmt: skip
            return "timeout"
        return None

    def expected_steps(self, progress: Progress) -> int:
        """Steps this run will end at: the schedule's, or under a minutes budget, the clock's estimate."""
        if self.cfg.max_minutes is None or progress.seconds <= 0:
            return self.total_steps
        by_clock = math.ceil(progress.step * self.cfg.max_minutes * 60 / progress.seconds)
        return max(progress.step, min(self.total_steps, by_clock))

    def lr_factor(self, progress: Progress) -> float:
        """This step's factor on the peak LR; with a minutes budget, set on the optimizer from the clock."""
        if self.cfg.max_minutes is None:
            return schedule_plan(self.scheduler)(self.scheduler.last_epoch)
        factor = time_multiplier(
            progress.seconds / (self.cfg.max_minutes * 60), self.cfg.warmup_ratio, self.cfg.schedule
        )
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        return factor

    def after_step(self, progress: Progress, lr: float) -> None:
        """Periodic work after an optimizer step, in this order: log, evaluate, checkpoint."""
        cfg, step, total = self.cfg, progress.step, self.total_steps
        logged = step % cfg.log_every == 0 or step >= total
        if logged:
            self.metrics = self.window.summary(lr, self.peak_flops)
            self.sink.log_metrics(self.metrics, step)
            self.sink.progress(step, self.expected_steps(progress))
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            self.last_eval, self.eval_step = self.run_evaluate(step), step
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self.save(progress)
            self.saved_step = step
        if logged:  # the next window's clock starts after evaluation/checkpointing: tokens/s is training only
            self.window = Window()

    def train_step(self, step: int) -> tuple[dict[str, float], int, float]:
        """One optimizer step over ``grad_accum`` micro-batches per rank.

        Returns (metrics: means over every rank's micro-batches, tokens: all ranks', FLOPs: this rank's).
        """
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
        means, tokens = self.read_metrics(reported, grad_norm, tokens, step)  # the one host sync of the step
        self.optimizer.step()
        if self.cfg.max_minutes is None:  # a minutes budget sets the LR from the clock instead
            self.scheduler.step()
        return means, tokens, flops

    def read_metrics(
        self, reported: dict[str, list[Tensor]], grad_norm: Tensor, tokens: int, step: int
    ) -> tuple[dict[str, float], int]:
        """(Metric means over all ranks + grad norm, all ranks' tokens); refuses non-finite loss / norm.

        One all-reduce sums [this rank's means..., tokens] over the ranks; every rank ran
        ``grad_accum`` micro-batches, so sum / world is the mean over the global batch, as world 1
        computes it. grad_norm is already global (DDP averaged the gradients).
        """
        names = list(reported)
        local = [torch.stack(v).mean().double() for v in reported.values()]
        count = torch.tensor(float(tokens), dtype=torch.float64, device=grad_norm.device)
        summed = distributed.sum_over_ranks(torch.stack([*local, count]))
        norm = grad_norm.double().reshape(1)
        values = torch.cat([summed[:-1] / self.world_size, norm, summed[-1:]]).tolist()
        means = dict(zip([*names, "grad_norm"], values[:-1], strict=True))
        if not math.isfinite(means["loss"]):
            raise NonFiniteLossError(step + 1, means["loss"])
        if not math.isfinite(means["grad_norm"]):
            raise NonFiniteLossError(step + 1, means["grad_norm"], what="gradient norm")
        return means, round(values[-1])

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
