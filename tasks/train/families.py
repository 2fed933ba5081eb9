"""What fine-tuning does differently per model family, behind one interface the stage calls.

``Heads`` (BERT family): the pre-trained encoder plus one fresh head per task; examples become
head features (classes, scores, SQuAD windows, tags); the transfer knobs (layer-wise LR
decay, freezing, gradual unfreezing) apply to the encoder's layers.

``TextToText`` (T5 family): the whole encoder-decoder is shared by every task; examples become
(input text, target text) pairs in the T5 paper's formats (``tasks.downstream.text_to_text``)
and every task trains the decoder's token loss. The transfer knobs are BERT-encoder settings,
so asking for one with a T5 checkpoint is an error, not silently ignored.

The family is read off the checkpoint's ``config.json`` (``model_type``), never configured
separately, so a checkpoint cannot be fine-tuned as the wrong kind of model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from models.heads import HeadSpec, Pooling
from models.io import load_multitask, load_t5, read_config, read_encoder_config
from models.multitask import MultiTaskModel
from models.t5 import T5ForConditionalGeneration
from models.t5_config import T5Config
from tasks.downstream.features import collate, encode_examples
from tasks.downstream.tasks import TaskSpec
from tasks.downstream.text_to_text import collate_text, encode_text_examples, text_format
from tasks.engine.finetune_objectives import MultiTaskObjective, TextToTextObjective
from tasks.engine.loop import StepHook
from tasks.engine.optim import param_groups as default_param_groups
from tasks.engine.transfer import FrozenEncoder, GradualUnfreezing, layerwise_param_groups
from tasks.train.finetune_config import FinetuneConfig


class FinetuneFamily(Protocol):
    """The per-family steps of the finetune stage (see the module docstring)."""

    name: str
    collate: Callable[[Sequence[Any]], dict[str, Tensor]]

    def check(self, cfg: FinetuneConfig, specs: Sequence[TaskSpec]) -> None: ...
    def build_model(
        self, cfg: FinetuneConfig, checkpoint_dir: Path, specs: Sequence[TaskSpec], seed: int
    ) -> nn.Module: ...
    def task_copy(self, model: nn.Module, task: str) -> nn.Module: ...
    def encode(self, cfg: FinetuneConfig, tokenizer: Tokenizer, spec: TaskSpec, examples: list) -> list: ...
    def objective(self, tasks: Sequence[str], specs: dict[str, TaskSpec]) -> MultiTaskObjective: ...
    def param_groups(self, model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]: ...
    def step_hook(self, cfg: FinetuneConfig) -> StepHook | None: ...
    def word_embeddings(self, model: nn.Module) -> nn.Parameter: ...
    def extra_config(self, cfg: FinetuneConfig) -> dict[str, Any]: ...


def head_specs(specs: Sequence[TaskSpec], pooling: Pooling) -> dict[str, HeadSpec]:
    """One head per task, sized by the task's label set; sentence-level heads pool as asked."""
    return {s.name: HeadSpec(kind=s.kind, num_labels=s.num_labels, pooling=pooling) for s in specs}


class Heads:
    """BERT family: shared encoder + one head per task."""

    name = "heads"
    collate = staticmethod(collate)

    def check(self, cfg: FinetuneConfig, specs: Sequence[TaskSpec]) -> None:
        return None

    def build_model(
        self, cfg: FinetuneConfig, checkpoint_dir: Path, specs: Sequence[TaskSpec], seed: int
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

    def task_copy(self, model: nn.Module, task: str) -> MultiTaskModel:
        """A model with `model`'s encoder and only task `task`'s head (for per-task fine-tuning)."""
        assert isinstance(model, MultiTaskModel)
        copy_ = MultiTaskModel(model.cfg, {task: model.head_specs[task]})
        keep = {k: v for k, v in model.state_dict().items() if k.startswith(("encoder.", f"heads.{task}."))}
        copy_.load_state_dict(keep, strict=True)
        return copy_.to(next(model.parameters()).device)

    def encode(self, cfg: FinetuneConfig, tokenizer: Tokenizer, spec: TaskSpec, examples: list) -> list:
        return encode_examples(tokenizer, spec, examples, cfg.max_seq_len, cfg.doc_stride)

    def objective(self, tasks: Sequence[str], specs: dict[str, TaskSpec]) -> MultiTaskObjective:
        return MultiTaskObjective({t: specs[t].kind for t in tasks})

    def param_groups(self, model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
        return layerwise_param_groups(model, cfg.layer_lr_decay, cfg.train.weight_decay)

    def step_hook(self, cfg: FinetuneConfig) -> StepHook | None:
        """The step hook that freezes / gradually unfreezes the encoder, if either is asked for."""
        if cfg.freeze_encoder:
            return FrozenEncoder()
        return GradualUnfreezing(cfg.unfreeze_every) if cfg.unfreeze_every else None

    def word_embeddings(self, model: nn.Module) -> nn.Parameter:
        return model.encoder.embeddings.word.weight

    def extra_config(self, cfg: FinetuneConfig) -> dict[str, Any]:
        return {}


class TextToText:
    """T5 family: one encoder-decoder for every task, trained on target texts."""

    name = "text_to_text"
    collate = staticmethod(collate_text)

    def check(self, cfg: FinetuneConfig, specs: Sequence[TaskSpec]) -> None:
        """Encoder-only settings and tasks with no text format are refused before any training."""
        bert_only = {
            "layer_lr_decay": cfg.layer_lr_decay != 1.0,
            "freeze_encoder": cfg.freeze_encoder,
            "unfreeze_every": cfg.unfreeze_every != 0,
            "pooling": cfg.pooling != "cls",
        }
        asked = [name for name, on in bert_only.items() if on]
        if asked:
            raise ValueError(
                f"finetune.{', finetune.'.join(asked)}: BERT-encoder setting(s) that a T5 checkpoint "
                "has no equivalent for; leave them at their defaults"
            )
        for spec in specs:
            text_format(spec)

    def build_model(
        self, cfg: FinetuneConfig, checkpoint_dir: Path, specs: Sequence[TaskSpec], seed: int
    ) -> T5ForConditionalGeneration:
        """The pre-trained encoder-decoder, or (init="random") its shape from scratch, seeded."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if cfg.init == "random":
                return T5ForConditionalGeneration(T5Config.from_dict(read_config(checkpoint_dir)["t5"]))
            return load_t5(checkpoint_dir)

    def task_copy(self, model: nn.Module, task: str) -> nn.Module:
        return copy.deepcopy(model)  # every parameter serves every task

    def encode(self, cfg: FinetuneConfig, tokenizer: Tokenizer, spec: TaskSpec, examples: list) -> list:
        return encode_text_examples(tokenizer, spec, examples, cfg.max_seq_len, cfg.closed_book_qa)

    def objective(self, tasks: Sequence[str], specs: dict[str, TaskSpec]) -> MultiTaskObjective:
        return TextToTextObjective(tasks)

    def param_groups(self, model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
        return default_param_groups(model, cfg.train.weight_decay)

    def step_hook(self, cfg: FinetuneConfig) -> StepHook | None:
        return None

    def word_embeddings(self, model: nn.Module) -> nn.Parameter:
        return model.embedding.weight  # shared by the encoder's and the decoder's inputs

    def extra_config(self, cfg: FinetuneConfig) -> dict[str, Any]:
        """Recorded in the fine-tuned checkpoint, so scoring formats inputs as training did."""
        return {"text_to_text": {"closed_book_qa": cfg.closed_book_qa}}


def family_of(checkpoint_dir: Path) -> FinetuneFamily:
    """Heads for a BERT-family checkpoint, TextToText for a T5 one."""
    return TextToText() if read_config(checkpoint_dir)["model_type"] == "t5" else Heads()
