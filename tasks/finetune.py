"""Fine-tune stage: one shared encoder + one head per task, trained on a T5-style task mixture.

Every step trains ONE task's batch. Which task is drawn from a mixing distribution over
tasks (examples-proportional with a cap K by default, T5 §3.5.2): rate ∝ min(n, K), so
large tasks do not drown small ones; "temperature" flattens it further (rate ∝
min(n, K)^(1/T)) and "equal" ignores sizes. The whole schedule of (task, example
indices) is drawn at construction from the seed, each task walking its own seeded epoch
permutations, so ``batch(step)`` is a pure function of (seed, step) and the shared
`fit()` resumes exactly.

Output: a self-contained checkpoint dir (model.safetensors, config.json with encoder
config and head specs, the input checkpoint's tokenizer files, tasks.json).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tokenizers import Tokenizer
from torch import Tensor

from models.heads import HeadSpec
from models.io import load_multitask, read_encoder_config, save_checkpoint
from models.multitask import MultiTaskModel
from tasks.artifacts import Artifact, build_stage, fingerprint
from tasks.downstream.features import Features, collate, encode_examples, read_examples
from tasks.downstream.tasks import TASKS, TaskSpec, check_task_names, get_task
from tasks.engine.finetune_objectives import MultiTaskObjective
from tasks.engine.loop import LoopConfig, fit
from tasks.engine.sink import MetricSink
from tasks.stage import StageContext, run_tracked

log = logging.getLogger(__name__)

STAGE = "finetune"
VERSION = "1"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
Mixing = Literal["proportional", "temperature", "equal"]


class FinetuneConfig(BaseModel):
    """Multi-task fine-tuning settings (flat and typed so Prefect renders a form)."""

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
    mixing: Mixing = Field(
        "proportional", description="Task sampling: rate ∝ min(n, K), its 1/T power, or equal."
    )
    mixing_cap_k: int = Field(16384, ge=1, le=10**9, description="K: examples counted per task at most.")
    temperature: float = Field(
        2.0, ge=1.0, le=100.0, description="T for mixing='temperature' (1 = proportional)."
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Examples (or SQuAD windows) per step.")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
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
    seed: int = Field(0, ge=0, description="Seeds the mixture, the permutations, head init and dropout.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast on supporting hardware.")

    @field_validator("tasks")
    @classmethod
    def _known_unique(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        return check_task_names(tasks)


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


def head_specs(specs: Sequence[TaskSpec]) -> dict[str, HeadSpec]:
    """One head per task, sized by the task's label set."""
    return {s.name: HeadSpec(kind=s.kind, num_labels=s.num_labels) for s in specs}


def build_model(cfg: FinetuneConfig, checkpoint_dir: Path, specs: Sequence[TaskSpec]) -> MultiTaskModel:
    """Pre-trained encoder + fresh heads, or (init="random") the same shape from scratch, seeded."""
    encoder_cfg = read_encoder_config(checkpoint_dir)
    if cfg.max_seq_len > encoder_cfg.max_position:
        raise ValueError(
            f"max_seq_len={cfg.max_seq_len} exceeds the encoder's max_position={encoder_cfg.max_position}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.init == "random":
            return MultiTaskModel(encoder_cfg, head_specs(specs))
        return load_multitask(checkpoint_dir, heads=head_specs(specs))


def train_features(
    cfg: FinetuneConfig, tokenizer: Tokenizer, specs: Sequence[TaskSpec]
) -> dict[str, list[Features]]:
    """Tokenized training inputs per task (after the optional seeded per-task cap)."""
    out = {}
    for k, spec in enumerate(specs):
        examples = read_examples(cfg.data_dir, spec, spec.train_file)
        cap = cfg.max_train_examples_per_task
        if cap is not None and len(examples) > cap:
            keep = np.sort(
                np.random.default_rng([cfg.seed, 1000 + k]).choice(len(examples), cap, replace=False)
            )
            examples = [examples[i] for i in keep]
        out[spec.name] = encode_examples(tokenizer, spec, examples, cfg.max_seq_len, cfg.doc_stride)
        log.info("%s: %d train examples -> %d features", spec.name, len(examples), len(out[spec.name]))
    return out


def loop_config(cfg: FinetuneConfig) -> LoopConfig:
    return LoopConfig(
        max_steps=cfg.max_steps,
        lr=cfg.lr,
        warmup_ratio=cfg.warmup_ratio,
        checkpoint_every=cfg.checkpoint_every,
        eval_every=max(1, cfg.max_steps // 50),  # the "evaluation" here reports per-task train losses
        seed=cfg.seed,
        precision=cfg.precision,
        log_every=max(1, min(50, cfg.max_steps // 20)),
    )


def write_output(out: Path, model: MultiTaskModel, checkpoint_dir: Path, specs: Sequence[TaskSpec]) -> None:
    """Checkpoint files + copied tokenizer files + tasks.json (the specs the heads were trained for)."""
    save_checkpoint(out, model.cpu(), extra_config={"tasks": [s.name for s in specs]})
    for name in TOKENIZER_FILES:
        if (checkpoint_dir / name).is_file():
            shutil.copy2(checkpoint_dir / name, out / name)
    (out / "tasks.json").write_text(json.dumps({s.name: asdict(s) for s in specs}, indent=2))


def finetune(
    cfg: FinetuneConfig, checkpoint: Artifact, *, workdir: Path, sink: MetricSink, run_id: str | None = None
) -> Artifact:
    """Fine-tune `checkpoint`'s encoder on `cfg.tasks` at once; returns the fine-tuned checkpoint artifact."""
    specs = [get_task(name) for name in cfg.tasks]
    resume_dir = Path(workdir) / STAGE / f".resume-{fingerprint(STAGE, VERSION, cfg, [checkpoint])}"

    def build(out: Path) -> dict:
        tokenizer = Tokenizer.from_file(str(checkpoint.file("tokenizer.json")))
        features = train_features(cfg, tokenizer, specs)
        rates = mixing_rates(
            {t: len(f) for t, f in features.items()}, cfg.mixing, cfg.mixing_cap_k, cfg.temperature
        )
        source = MultiTaskBatchSource(features, rates, cfg.batch_size, cfg.max_steps, cfg.seed)
        model = build_model(cfg, checkpoint.dir, specs)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        objective = MultiTaskObjective({s.name: s.kind for s in specs})
        result = fit(
            model,
            objective,
            source,
            loop_config(cfg),
            sink,
            evaluate=lambda: {f"train_loss/{t}": v for t, v in objective.recent_losses().items()},
            checkpoint_dir=resume_dir if cfg.checkpoint_every else None,
        )
        write_output(out, model, checkpoint.dir, specs)
        return summary(result.steps, objective.recent_losses(), features, rates)

    artifact = build_stage(
        workdir=Path(workdir),
        stage=STAGE,
        version=VERSION,
        config=cfg,
        inputs=[checkpoint],
        build=build,
        run_id=run_id,
    )
    shutil.rmtree(resume_dir, ignore_errors=True)  # finished: the resumable state is no longer needed
    return artifact


def summary(
    steps: int,
    losses: Mapping[str, float],
    features: Mapping[str, Sequence[Features]],
    rates: Mapping[str, float],
) -> dict:
    """Flat, JSON-able: steps, smoothed final train loss, feature count and mixing rate per task."""
    out: dict[str, float | int] = {"steps": steps}
    for name in features:
        if name in losses:  # a task the mixture never drew has no loss to report
            out[f"train_loss/{name}"] = losses[name]
        out[f"train_features/{name}"] = len(features[name])
        out[f"mixing_rate/{name}"] = rates[name]
    return out


@task(name="finetune", cache_policy=NO_CACHE)
def finetune_task(
    cfg: FinetuneConfig, checkpoint: Artifact, ctx: StageContext, run_name: str = STAGE
) -> Artifact:
    return run_tracked(
        ctx,
        STAGE,
        cfg,
        [checkpoint],
        lambda sink, run_id: finetune(cfg, checkpoint, workdir=ctx.path, sink=sink, run_id=run_id),
        files=["config.json", "tasks.json"],
        run_name=run_name,
    )
