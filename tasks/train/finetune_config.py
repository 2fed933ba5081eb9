"""FinetuneConfig: which tasks, mixed how, transferred how; trained with the shared TrainSettings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.heads import Pooling
from tasks.downstream.selection import SelectionSplit
from tasks.downstream.tasks import TASKS, check_task_names
from tasks.engine.settings import TrainSettings, with_defaults

Mixing = Literal["proportional", "temperature", "equal"]
TRAIN_DEFAULTS = {"lr": 1e-4, "warmup_ratio": 0.1, "log_every": 20}


class FinetuneConfig(BaseModel):
    """Fine-tuning settings: tasks and mixture, transfer options, and ``train`` (the shared loop settings).

    ``train.max_steps`` counts optimizer steps over the whole mixture. Fine-tuning reports
    its per-task training losses 50 times a run unless ``train.eval_every`` says otherwise,
    and keeps resumable state only when ``train.checkpoint_every`` > 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: TrainSettings = Field(
        default_factory=lambda: TrainSettings(**TRAIN_DEFAULTS), description="Optimiser, schedule, budget."
    )

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
    group_by_length: bool = Field(
        False, description="Batch rows of similar length together (in groups of 50 batches): less padding."
    )
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
    freeze_embeddings: bool = Field(
        False,
        description="Keep the word embeddings as pre-trained: words fine-tuning never shows stay where "
        "pre-training put them relative to the words it moves.",
    )
    pooling: Pooling = Field(
        "cls",
        description="Sentence-level heads read [CLS] (BERT) or the mean of the non-padding token states.",
    )
    max_seq_len: int = Field(128, ge=8, le=4096, description="Token budget per input (pairs: longest-first).")
    doc_stride: int = Field(64, ge=1, le=4096, description="SQuAD: tokens between window starts.")
    closed_book_qa: bool = Field(
        False, description="T5 only: SQuAD inputs hold the question alone (closed-book QA), no context."
    )
    hold_out: SelectionSplit | None = Field(
        None,
        description="Keep this seeded slice of each task's train set out of training (a sweep's selection).",
    )
    max_train_examples_per_task: int | None = Field(
        None, ge=1, description="Cap each task's train set (seeded random subset); None uses all."
    )
    seeds: tuple[int, ...] = Field(
        (0,),
        min_length=1,
        max_length=32,
        description="One model per seed (mixture, order, head init, dropout); several: median seed kept.",
    )

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

    @model_validator(mode="before")
    @classmethod
    def _train_defaults(cls, data: Any) -> Any:
        return with_defaults(data, TRAIN_DEFAULTS)

    @model_validator(mode="after")
    def _compatible(self) -> FinetuneConfig:
        if self.freeze_encoder and self.unfreeze_every:
            raise ValueError("freeze_encoder and unfreeze_every > 0 exclude each other")
        if self.freeze_embeddings and self.unfreeze_every:
            raise ValueError("freeze_embeddings and unfreeze_every > 0 exclude each other")
        if self.then_single_steps and self.mode != "multitask":
            raise ValueError("then_single_steps continues a multi-task model: it needs mode='multitask'")
        return self
