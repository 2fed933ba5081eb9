"""Fine-tune stage: one shared encoder + one head per task, trained on a T5-style task mixture.

Every step trains ONE task's batch. Which task is drawn from a mixing distribution over
tasks (examples-proportional with a cap K by default, T5 §3.5.2): rate ∝ min(n, K), so
large tasks do not drown small ones; "temperature" flattens it further (rate ∝
min(n, K)^(1/T)) and "equal" ignores sizes. The whole schedule of (task, example
indices) is drawn at construction from the seed, each task walking its own seeded epoch
permutations, so ``batch(step)`` is a pure function of (seed, step) and the shared
`fit()` resumes exactly.

Modes (T5 §3.5): ``multitask`` trains one model on the mixture for `max_steps`, then
optionally fine-tunes a copy per task for `then_single_steps` more steps on that task
alone ("multi-task + fine-tuning"). ``single`` trains one model per task, each its own
`fit()` run. Budget rule for ``single``: task t trains for round(max_steps x rate_t)
steps (at least 1), rate_t being its mixing rate, i.e. exactly the share of steps the
mixture would give it, so single-task and multi-task runs see the same number of
batches of every task and the same total compute.

Seeds: every seed in `seeds` trains its own model (set); with several, each set is
scored on the dev sets and the MEDIAN-scoring seed's set becomes the stage's model (the
top level of the output, hard-linked), the others stay under ``seeds/<seed>/`` for the
evaluate stage's per-seed and median report. The median, not the best, because picking
the best of n seeds on dev would report an optimistically biased number and register a
lucky model; for an even count the lower median is taken.

Output: a self-contained checkpoint dir (model.safetensors, config.json with encoder
config and head specs, the input checkpoint's tokenizer files, tasks.json), plus
``per_task/<TASK>/`` checkpoints and members.json when tasks have their own model, and
finetune.json (mode, seeds, per-seed selection scores, median seed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tokenizers import Tokenizer
from torch import Tensor

from models.heads import HeadSpec, Pooling
from models.io import load_multitask, read_encoder_config, save_checkpoint
from models.multitask import MultiTaskModel
from tasks.data.tokenizer import TOKENIZER_FILES
from tasks.downstream.features import Features, collate, encode_examples, read_examples, task_file
from tasks.downstream.modelset import FINETUNE_INFO, write_members
from tasks.downstream.scoring import ScoringConfig, evaluate_model_set, selection_score
from tasks.downstream.tasks import TASKS, TaskSpec, check_task_names, get_task
from tasks.engine.finetune_objectives import MultiTaskObjective
from tasks.engine.loop import LoopConfig, StepHook, fit
from tasks.engine.transfer import FrozenEncoder, GradualUnfreezing, layerwise_param_groups
from tasks.sink import MetricSink
from tasks.store.artifact import Artifact
from tasks.store.stage import Job, Stage

log = logging.getLogger(__name__)

WEIGHT_DECAY = 0.01
Mixing = Literal["proportional", "temperature", "equal"]


class FinetuneConfig(BaseModel):
    """Fine-tuning settings (flat and typed so Prefect renders a form)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: str = Field(description="Downstream data dir holding glue/<TASK>/*.tsv and squad/*.json.")
    tasks: tuple[str, ...] = Field(
        ("CoLA", "SST-2", "MRPC", "STS-B", "RTE"),
        min_length=1,
        description=f"Tasks to fine-tune on, by registry name: {', '.join(TASKS)}.",
    )
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="Start from the checkpoint's encoder, or random weights of the same shape."
    )
    mode: Literal["multitask", "single"] = Field(
        "multitask",
        description="One model on the task mixture, or one model per task (same per-task step budget).",
    )
    then_single_steps: int = Field(
        0,
        ge=0,
        le=10**7,
        description="multitask mode: then fine-tune a copy per task for N more steps on that task (0: off).",
    )
    mixing: Mixing = Field(
        "proportional", description="Task sampling: rate ∝ min(n, K), its 1/T power, or equal."
    )
    mixing_cap_k: int = Field(16384, ge=1, le=10**9, description="K: examples counted per task at most.")
    temperature: float = Field(
        2.0, ge=1.0, le=100.0, description="T for mixing='temperature' (1 = proportional)."
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Examples (or SQuAD windows) per step.")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    layer_lr_decay: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Layer-wise LR decay: each layer gets this factor of the LR of the layer above (1: off).",
    )
    freeze_encoder: bool = Field(
        False, description="Feature-based transfer: train the heads only, on a fixed (eval-mode) encoder."
    )
    unfreeze_every: int = Field(
        0,
        ge=0,
        le=10**7,
        description="Gradual unfreezing: heads first, one more layer (top first) every N steps (0: off).",
    )
    pooling: Pooling = Field(
        "cls",
        description="Sentence-level heads read [CLS] (BERT) or the mean of the non-padding token states.",
    )
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Fraction of steps of linear warmup.")
    max_steps: int = Field(1000, ge=1, le=10**7, description="Optimizer steps over the whole mixture.")
    max_seq_len: int = Field(128, ge=8, le=4096, description="Token budget per input (pairs: longest-first).")
    doc_stride: int = Field(64, ge=1, le=4096, description="SQuAD: tokens between window starts.")
    max_train_examples_per_task: int | None = Field(
        None, ge=1, description="Cap each task's train set (seeded random subset); None uses all."
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Save a resumable training state every N steps (0: off)."
    )
    seeds: tuple[int, ...] = Field(
        (0,),
        min_length=1,
        max_length=32,
        description="One model per seed (mixture, order, head init, dropout); several: median seed kept.",
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast on supporting hardware.")

    @field_validator("tasks")
    @classmethod
    def _known_unique(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        return check_task_names(tasks)

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {list(seeds)}")
        return seeds

    @model_validator(mode="after")
    def _compatible(self) -> FinetuneConfig:
        if self.freeze_encoder and self.unfreeze_every:
            raise ValueError("freeze_encoder and unfreeze_every > 0 exclude each other")
        if self.then_single_steps and self.mode != "multitask":
            raise ValueError("then_single_steps continues a multi-task model: it needs mode='multitask'")
        return self


def mixing_rates(
    sizes: Mapping[str, int], mixing: Mixing, cap_k: int, temperature: float
) -> dict[str, float]:
    """Probability of drawing each task at a step (sums to 1)."""
    if mixing == "equal":
        weights = {t: 1.0 for t in sizes}
    else:
        power = 1.0 if mixing == "proportional" else 1.0 / temperature
        weights = {t: float(min(n, cap_k)) ** power for t, n in sizes.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


class MultiTaskBatchSource:
    """Deterministic single-task batches: ``batch(step)`` depends only on (seed, step).

    The schedule for steps 0..num_batches-1 is drawn up front: the task of each step
    from the mixing rates, and each task's example indices from consecutive seeded
    permutations of its features (a fresh permutation per epoch of that task).
    """

    def __init__(
        self,
        features: Mapping[str, Sequence[Features]],
        rates: Mapping[str, float],
        batch_size: int,
        num_batches: int,
        seed: int,
    ) -> None:
        self.features = {t: list(f) for t, f in features.items()}
        self.tasks = list(self.features)
        empty = [t for t in self.tasks if not self.features[t]]
        if empty:
            raise ValueError(f"no training features for task(s) {empty}")
        picks = np.random.default_rng([seed, 0]).choice(
            len(self.tasks), size=num_batches, p=[rates[t] for t in self.tasks]
        )  # (num_batches,) task index per step
        self.schedule: list[tuple[str, np.ndarray]] = self._assign_indices(picks, batch_size, seed)

    def _assign_indices(self, picks: np.ndarray, batch_size: int, seed: int) -> list[tuple[str, np.ndarray]]:
        """Cut each task's stream of epoch permutations into its batches, in step order."""
        streams: dict[int, np.ndarray] = {}
        for k, name in enumerate(self.tasks):
            needed = int((picks == k).sum()) * batch_size
            n = len(self.features[name])
            rng = np.random.default_rng([seed, 1 + k])
            epochs = [rng.permutation(n) for _ in range(max(1, math.ceil(needed / n)))]
            streams[k] = np.concatenate(epochs)[:needed].reshape(-1, batch_size)  # (steps of task k, B)
        cursor = dict.fromkeys(streams, 0)
        schedule = []
        for k in picks.tolist():
            schedule.append((self.tasks[k], streams[k][cursor[k]]))
            cursor[k] += 1
        return schedule

    def __len__(self) -> int:
        return len(self.schedule)

    def batch(self, step: int) -> dict[str, Tensor | str]:
        """The padded batch of `step` plus ``task``: its task name."""
        if not 0 <= step < len(self.schedule):
            raise IndexError(
                f"batch step {step} outside the precomputed schedule of {len(self.schedule)} batches"
            )
        name, indices = self.schedule[step]
        batch: dict[str, Tensor | str] = dict(collate([self.features[name][i] for i in indices]))
        batch["task"] = name
        return batch


def head_specs(specs: Sequence[TaskSpec], pooling: Pooling) -> dict[str, HeadSpec]:
    """One head per task, sized by the task's label set; sentence-level heads pool as asked."""
    return {s.name: HeadSpec(kind=s.kind, num_labels=s.num_labels, pooling=pooling) for s in specs}


def build_model(
    cfg: FinetuneConfig, checkpoint_dir: Path, specs: Sequence[TaskSpec], seed: int
) -> MultiTaskModel:
    """Pre-trained encoder + fresh heads, or (init="random") the same shape from scratch, seeded."""
    encoder_cfg = read_encoder_config(checkpoint_dir)
    if cfg.max_seq_len > encoder_cfg.max_position:
        raise ValueError(
            f"max_seq_len={cfg.max_seq_len} exceeds the encoder's max_position={encoder_cfg.max_position}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.init == "random":
            return MultiTaskModel(encoder_cfg, head_specs(specs, cfg.pooling))
        return load_multitask(checkpoint_dir, heads=head_specs(specs, cfg.pooling))


def single_head_copy(model: MultiTaskModel, name: str) -> MultiTaskModel:
    """A model with `model`'s encoder and only task `name`'s head (for per-task fine-tuning)."""
    copy = MultiTaskModel(model.cfg, {name: model.head_specs[name]})
    keep = {k: v for k, v in model.state_dict().items() if k.startswith(("encoder.", f"heads.{name}."))}
    copy.load_state_dict(keep, strict=True)
    return copy.to(next(model.parameters()).device)


def train_features(
    cfg: FinetuneConfig, tokenizer: Tokenizer, specs: Sequence[TaskSpec]
) -> dict[str, list[Features]]:
    """Tokenized training inputs per task, after the optional per-task cap.

    The cap's subset is drawn with the FIRST seed and shared by all seeds, so seeds differ
    in training randomness only, not in the data they see.
    """
    out = {}
    for k, spec in enumerate(specs):
        examples = read_examples(cfg.data_dir, spec, spec.train_file)
        cap = cfg.max_train_examples_per_task
        if cap is not None and len(examples) > cap:
            rng = np.random.default_rng([cfg.seeds[0], 1000 + k])
            examples = [examples[i] for i in np.sort(rng.choice(len(examples), cap, replace=False))]
        out[spec.name] = encode_examples(tokenizer, spec, examples, cfg.max_seq_len, cfg.doc_stride)
        log.info("%s: %d train examples -> %d features", spec.name, len(examples), len(out[spec.name]))
    return out


def single_task_steps(max_steps: int, rate: float) -> int:
    """Steps of one task's own run in single mode: its share of the mixture's budget (at least 1)."""
    return max(1, round(max_steps * rate))


def loop_config(cfg: FinetuneConfig, steps: int, seed: int) -> LoopConfig:
    return LoopConfig(
        max_steps=steps,
        lr=cfg.lr,
        weight_decay=WEIGHT_DECAY,
        warmup_ratio=cfg.warmup_ratio,
        checkpoint_every=cfg.checkpoint_every,
        eval_every=max(1, steps // 50),  # the "evaluation" here reports per-task train losses
        seed=seed,
        precision=cfg.precision,
        log_every=max(1, min(50, steps // 20)),
    )


def transfer_hook(cfg: FinetuneConfig) -> StepHook | None:
    """The step hook that freezes / gradually unfreezes the encoder, if either is asked for."""
    if cfg.freeze_encoder:
        return FrozenEncoder()
    return GradualUnfreezing(cfg.unfreeze_every) if cfg.unfreeze_every else None


class PrefixedSink:
    """Forwards to `sink` with every metric name prefixed: runs of one stage stay apart in MLflow."""

    def __init__(self, sink: MetricSink, prefix: str) -> None:
        self.sink, self.prefix = sink, prefix

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.sink.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step)

    def progress(self, done: int, total: int) -> None:
        self.sink.progress(done, total)


@dataclass(frozen=True)
class TrainPlan:
    """What every training run of one stage shares: settings, data, mixture and where to resume."""

    cfg: FinetuneConfig
    specs: tuple[TaskSpec, ...]
    features: Mapping[str, Sequence[Features]]
    rates: Mapping[str, float]
    checkpoint_dir: Path
    resume_root: Path

    def resume_dir(self, seed: int, phase: str) -> Path | None:
        return self.resume_root / f"seed{seed}-{phase}" if self.cfg.checkpoint_every else None


def train_run(
    plan: TrainPlan,
    model: MultiTaskModel,
    tasks: Sequence[str],
    steps: int,
    seed: int,
    sink: MetricSink,
    phase: str,
) -> dict[str, float]:
    """One fit() of `model` on the mixture of `tasks` (rates renormalised); returns steps and train losses."""
    total = sum(plan.rates[t] for t in tasks)
    rates = {t: plan.rates[t] / total for t in tasks}
    source = MultiTaskBatchSource(
        {t: plan.features[t] for t in tasks}, rates, plan.cfg.batch_size, steps, seed
    )
    objective = MultiTaskObjective({t: get_task(t).kind for t in tasks})
    result = fit(
        model,
        objective,
        source,
        loop_config(plan.cfg, steps, seed),
        sink,
        evaluate=lambda: {f"train_loss/{t}": v for t, v in objective.recent_losses().items()},
        checkpoint_dir=plan.resume_dir(seed, phase),
        param_groups=layerwise_param_groups(model, plan.cfg.layer_lr_decay, WEIGHT_DECAY),
        step_hook=transfer_hook(plan.cfg),
    )
    return {"steps": result.steps, **{f"train_loss/{t}": v for t, v in objective.recent_losses().items()}}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_model_set(plan: TrainPlan, seed: int, dest: Path, sink: MetricSink) -> dict[str, float]:
    """Train one seed's model(s) into `dest` following `plan.cfg.mode`; returns a flat summary."""
    cfg, members, summary = plan.cfg, {}, {}
    if cfg.mode == "multitask":
        model = build_model(cfg, plan.checkpoint_dir, plan.specs, seed).to(device())
        summary = train_run(plan, model, cfg.tasks, cfg.max_steps, seed, sink, "multitask")
        write_output(dest, model, plan.checkpoint_dir, plan.specs)
    else:
        write_tokenizer_files(dest, plan.checkpoint_dir, plan.specs)  # no shared model at the top level
    for spec in plan.specs if (cfg.mode == "single" or cfg.then_single_steps) else ():
        if cfg.mode == "single":
            tuned = build_model(cfg, plan.checkpoint_dir, [spec], seed).to(device())
            steps = single_task_steps(cfg.max_steps, plan.rates[spec.name])
        else:  # multi-task + fine-tuning: continue from the multi-task model on this task alone
            tuned, steps = single_head_copy(model, spec.name), cfg.then_single_steps
        run = train_run(plan, tuned, [spec.name], steps, seed, PrefixedSink(sink, f"{spec.name}/"), spec.name)
        summary[f"single_steps/{spec.name}"] = run["steps"]
        summary[f"single_train_loss/{spec.name}"] = run[f"train_loss/{spec.name}"]
        members[spec.name] = f"per_task/{spec.name}"
        write_output(dest / members[spec.name], tuned, plan.checkpoint_dir, [spec])
    write_members(dest, members)
    return summary


def write_tokenizer_files(out: Path, checkpoint_dir: Path, specs: Sequence[TaskSpec]) -> None:
    """The input checkpoint's tokenizer files + tasks.json (the specs the heads were trained for)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (checkpoint_dir / name).is_file():
            shutil.copy2(checkpoint_dir / name, out / name)
    (out / "tasks.json").write_text(json.dumps({s.name: asdict(s) for s in specs}, indent=2))


def write_output(out: Path, model: MultiTaskModel, checkpoint_dir: Path, specs: Sequence[TaskSpec]) -> None:
    """A self-contained checkpoint: weights + config, tokenizer files and tasks.json."""
    save_checkpoint(out, model.cpu(), extra_config={"tasks": [s.name for s in specs]})
    model.to(device())
    write_tokenizer_files(out, checkpoint_dir, specs)


def pick_median_seed(
    cfg: FinetuneConfig, specs: Sequence[TaskSpec], sets: Mapping[int, Path]
) -> tuple[int, dict]:
    """(median seed, {seed: dev selection score}): each seed's set scored on the tasks' dev sets."""
    eval_cfg = ScoringConfig(data_dir=cfg.data_dir, max_seq_len=cfg.max_seq_len, doc_stride=cfg.doc_stride)
    scores = {
        seed: selection_score(evaluate_model_set(eval_cfg, d, specs).per_task) for seed, d in sets.items()
    }
    ranked = sorted(scores, key=lambda seed: (scores[seed], seed))
    return ranked[(len(ranked) - 1) // 2], scores


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of `src` into `dst` (copy where links are not possible): no extra disk."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def train_seeds(plan: TrainPlan, out: Path, sink: MetricSink) -> tuple[dict, dict]:
    """Train every seed; returns (summary of the stage's model, finetune.json payload)."""
    seeds = plan.cfg.seeds
    info: dict = {"mode": plan.cfg.mode, "seeds": list(seeds), "median_seed": seeds[0]}
    if len(seeds) == 1:
        return train_model_set(plan, seeds[0], out, sink), info
    sets = {seed: out / "seeds" / str(seed) for seed in seeds}
    summaries = {
        seed: train_model_set(plan, seed, sets[seed], PrefixedSink(sink, f"seed{seed}/")) for seed in seeds
    }
    median, scores = pick_median_seed(plan.cfg, plan.specs, sets)
    link_tree(sets[median], out)
    log.info("seed selection scores %s: median seed %d is the stage's model", scores, median)
    info |= {
        "median_seed": median,
        "selection_scores": {str(s): v for s, v in scores.items()},
        "seed_dirs": {str(s): f"seeds/{s}" for s in seeds},
    }
    summary = {**summaries[median], "median_seed": median}
    return summary | {f"selection_score/seed{s}": v for s, v in scores.items()}, info


def build_finetune(cfg: FinetuneConfig, checkpoint: Artifact, *, out: Path, job: Job) -> dict:
    """Fine-tune `checkpoint`'s encoder on `cfg.tasks` into `out` (killed runs resume from job.scratch)."""
    specs = tuple(get_task(name) for name in cfg.tasks)
    tokenizer = Tokenizer.from_file(str(checkpoint.file("tokenizer.json")))
    features = train_features(cfg, tokenizer, specs)
    sizes = {t: len(f) for t, f in features.items()}
    rates = mixing_rates(sizes, cfg.mixing, cfg.mixing_cap_k, cfg.temperature)
    plan = TrainPlan(cfg, specs, features, rates, checkpoint.dir, job.scratch)
    summary, info = train_seeds(plan, out, job.sink)
    (out / FINETUNE_INFO).write_text(json.dumps(info, indent=2))
    for name in features:
        summary[f"train_features/{name}"] = len(features[name])
        summary[f"mixing_rate/{name}"] = rates[name]
    return summary


def task_files(cfg: FinetuneConfig, workdir: Path) -> list[Path]:
    """The downstream files fine-tuning reads: train files, and dev files when seeds are ranked on them."""
    specs = [get_task(name) for name in cfg.tasks]
    files = [task_file(cfg.data_dir, s, s.train_file) for s in specs]
    if len(cfg.seeds) > 1:
        files += [task_file(cfg.data_dir, s, split.file) for s in specs for split in s.dev_splits]
    return files


finetune = Stage("finetune", build_finetune, reads=task_files, log_files=("config.json", "tasks.json"))
