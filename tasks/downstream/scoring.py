"""Scoring a fine-tuned model set on dev files: model outputs, GLUE, SQuAD and entity metrics, per task.

A BERT-family model is scored from its heads' outputs; a T5-family model writes its answers
as text (greedy decoding), read back by ``tasks.downstream.text_to_text`` and scored by the
same metric modules, with the outputs that are no valid label counted as ``invalid_outputs``.

Shared by the evaluate stage (the report) and fine-tuning (ranking seeds), so neither
stage imports the other. Scores come from the project's own `evaluate.Metric` subclasses
(official GLUE / SQuAD definitions, 0-100 scale).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import Tokenizer
from torch import nn

from models.io import load_multitask, load_t5, read_config
from models.multitask import MultiTaskModel
from models.t5 import T5ForConditionalGeneration
from tasks.downstream.conll import TokenExample
from tasks.downstream.features import (
    Features,
    SpanFeatures,
    TokenFeatures,
    collate,
    encode_examples,
    read_examples,
)
from tasks.downstream.glue import GlueExample
from tasks.downstream.modelset import member_dir
from tasks.downstream.selection import SelectionSplit, split_examples
from tasks.downstream.spans import best_spans
from tasks.downstream.squad import SquadExample
from tasks.downstream.tasks import DevSplit, TaskSpec, get_task
from tasks.downstream.text_to_text import (
    encode_text_examples,
    generate_texts,
    max_target_tokens,
    parse_output,
    scored_prediction,
    text_format,
)
from tasks.engine.device import pick_device
from tasks.sink import MetricSink

log = logging.getLogger(__name__)

N_BEST_WRITTEN = 5  # candidates kept per SQuAD question in predictions/SQuAD.jsonl


class MissingHeadError(ValueError):
    """A model without a head of the right kind for a task: it cannot be scored on that task."""


class ScoringConfig(BaseModel):
    """How dev files are read and scored (flat and typed so Prefect renders a form)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: str = Field(description="Downstream data dir holding glue/<TASK>/dev*.tsv and squad/dev.json.")
    max_seq_len: int = Field(128, ge=8, le=4096, description="Token budget per input (pairs: longest-first).")
    doc_stride: int = Field(64, ge=1, le=4096, description="SQuAD: tokens between window starts.")
    n_best: int = Field(20, ge=1, le=100, description="SQuAD: start/end candidates per window.")
    max_answer_length: int = Field(30, ge=1, le=512, description="SQuAD: longest answer span in tokens.")
    no_answer_threshold: float = Field(
        0.0,
        ge=-1000.0,
        le=1000.0,
        description="SQuAD v2: predict no answer when null score minus best span score exceeds this.",
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Inference batch size.")
    split: Literal["dev", "selection"] = Field(
        "dev",
        description="Score the dev files, or the selection split held out of each task's train file.",
    )
    selection: SelectionSplit | None = Field(None, description="The held-out slice when split='selection'.")
    max_examples_per_task: int | None = Field(
        None, ge=1, description="Score only the first N dev examples per file (smoke runs); None = all."
    )

    @model_validator(mode="after")
    def _selection_given(self) -> ScoringConfig:
        if (self.split == "selection") != (self.selection is not None):
            raise ValueError("split='selection' needs selection (the held-out slice), and only it takes one")
        return self


def scored_examples(cfg: ScoringConfig, spec: TaskSpec) -> list[tuple[DevSplit, list[Any]]]:
    """What is scored for one task: each dev file, or the selection slice of its train file.

    A selection split is one slice per task, so its metrics carry no dev-file suffix (MNLI
    reports ``accuracy``, not ``accuracy_matched``/``_mismatched``).
    """
    cap = cfg.max_examples_per_task
    if cfg.split == "selection":
        assert cfg.selection is not None
        examples = read_examples(cfg.data_dir, spec, spec.train_file)
        held_out = split_examples(examples, spec.name, cfg.selection)[1]
        return [(DevSplit("", spec.train_file), held_out[:cap])]
    return [(split, read_examples(cfg.data_dir, spec, split.file)[:cap]) for split in spec.dev_splits]


def model_outputs(
    model: MultiTaskModel, task: str, features: Sequence[Features], batch_size: int
) -> list[Any]:
    """Per-feature outputs in input order: (C,) logits, a float score, (start, end) (T_f,) logits,
    or (T_f, C) tag logits.

    Features are run in length order so each padded batch wastes little compute.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    outputs: list[Any] = [None] * len(features)
    with torch.no_grad():
        for lo in range(0, len(order), batch_size):
            chunk = order[lo : lo + batch_size]
            batch = collate([features[i] for i in chunk])
            out = model(
                task, **{k: batch[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask")}
            )
            for row, i in enumerate(chunk):
                outputs[i] = _row_output(out, row, len(features[i].input_ids))
    return outputs


def _row_output(out: Any, row: int, length: int) -> Any:
    if isinstance(out, tuple):  # span: (B, T) start and end logits, cut back to this feature's length
        return out[0][row, :length].float().cpu().numpy(), out[1][row, :length].float().cpu().numpy()
    value = out[row].float().cpu()
    return value.numpy() if value.ndim else float(value)


def score_glue(
    spec: TaskSpec, split: DevSplit, examples: Sequence[GlueExample], outputs: Sequence[Any]
) -> tuple[dict[str, float], list[dict]]:
    """Metrics of one GLUE dev file (keys suffixed for MNLI m/mm) and its prediction rows."""
    if spec.kind == "classification":
        preds: list[int | float] = [int(np.argmax(o)) for o in outputs]
    else:
        preds = [float(o) for o in outputs]
    return glue_scores(spec, split, examples, preds)


def glue_scores(
    spec: TaskSpec, split: DevSplit, examples: Sequence[GlueExample], preds: Sequence[int | float]
) -> tuple[dict[str, float], list[dict]]:
    """GLUE metrics of predicted class indices or scores, and the prediction rows."""
    from tasks.downstream.metrics.glue import GlueMetric  # imports `evaluate` (~3 s): only when scoring

    scores = GlueMetric(spec.name).compute(predictions=preds, references=[e.label for e in examples])
    suffix = f"_{split.suffix}" if split.suffix else ""
    rows = [
        {
            "id": e.id,
            "split": split.file,
            "prediction": _label_name(spec, p),
            "label": _label_name(spec, e.label),
        }
        for e, p in zip(examples, preds, strict=True)
    ]
    return {f"{name}{suffix}": value for name, value in scores.items()}, rows


def _label_name(spec: TaskSpec, value: int | float) -> str | float:
    return spec.labels[int(value)] if spec.kind == "classification" else float(value)


def score_squad(
    cfg: ScoringConfig,
    spec: TaskSpec,
    examples: Sequence[SquadExample],
    features: Sequence[SpanFeatures],
    outputs: Sequence[Any],
) -> tuple[dict[str, float], list[dict]]:
    """EM / F1 from the n-best decoded spans of every question over all its windows.

    For a task with unanswerable questions (SQuAD v2.0) each question also gets a
    no-answer score: its null score (the [CLS] start + end logit, the smallest over its
    windows, as in BERT's run_squad) minus the best span's score. Above
    `cfg.no_answer_threshold` the prediction is ""; the metric also tunes that threshold
    on this dev set (best_exact / best_f1 and their thresholds).
    """
    from tasks.downstream.metrics.squad import SquadMetric, SquadV2Metric  # `evaluate`: see score_glue

    windows: dict[int, list[int]] = defaultdict(list)
    for i, feature in enumerate(features):
        windows[feature.example_index].append(i)
    predictions, rows = [], []
    for index, example in enumerate(examples):
        ids = windows[index]
        spans = best_spans(
            [features[i] for i in ids],
            example.context,
            [outputs[i][0] for i in ids],
            [outputs[i][1] for i in ids],
            n_best=cfg.n_best,
            max_answer_length=cfg.max_answer_length,
        )
        text = spans[0].text if spans else ""
        row = {"id": example.id, "prediction_text": text, "answers": list(example.answer_texts)}
        prediction = {"id": example.id, "prediction_text": text}
        if spec.no_answer:
            null = min(float(outputs[i][0][0] + outputs[i][1][0]) for i in ids)  # [CLS] is position 0
            na_score = null - spans[0].score if spans else math.inf  # no valid span: only "" is possible
            prediction["no_answer_probability"] = na_score
            answered = na_score <= cfg.no_answer_threshold
            row |= {
                "prediction_text": text if answered else "",
                "best_span": text,
                "null_score": null,
                "no_answer_score": na_score if math.isfinite(na_score) else None,
                "is_impossible": example.is_impossible,
            }
        row["n_best"] = [{"text": s.text, "score": s.score} for s in spans[:N_BEST_WRITTEN]]
        predictions.append(prediction)
        rows.append(row)
    references = squad_references(examples)
    if spec.no_answer:
        metric = SquadV2Metric().compute(
            predictions=predictions, references=references, no_answer_threshold=cfg.no_answer_threshold
        )
        return metric, rows
    return SquadMetric().compute(predictions=predictions, references=references), rows


def squad_references(examples: Sequence[SquadExample]) -> list[dict]:
    """The SQuAD metric's references: every gold answer's text and start."""
    return [
        {"id": e.id, "answers": {"text": list(e.answer_texts), "answer_start": [s for _, s in e.answers]}}
        for e in examples
    ]


def word_tags(
    spec: TaskSpec, example: TokenExample, windows: Sequence[tuple[TokenFeatures, Any]]
) -> list[str]:
    """One predicted tag per word: the argmax at its first sub-word, in the window that owns it.

    A word the tokenizer turned into no sub-word at all has no logits and is predicted ``O``.
    """
    tags = ["O"] * len(example.words)
    for feature, logits in windows:
        for t, (word, owned) in enumerate(zip(feature.word_ids, feature.owned, strict=True)):
            if owned:
                tags[word] = spec.labels[int(np.argmax(logits[t]))]
    return tags


def score_tagging(
    spec: TaskSpec,
    examples: Sequence[TokenExample],
    features: Sequence[TokenFeatures],
    outputs: Sequence[Any],
) -> tuple[dict[str, float], list[dict]]:
    """Entity-level P/R/F1 of the word-level predictions, after merging each sentence's windows."""
    from tasks.downstream.metrics.entities import EntityMetric  # `evaluate`: see score_glue

    windows: dict[int, list[tuple[TokenFeatures, Any]]] = defaultdict(list)
    for feature, output in zip(features, outputs, strict=True):
        windows[feature.example_index].append((feature, output))
    predictions = [word_tags(spec, e, windows[i]) for i, e in enumerate(examples)]
    references = [list(e.tags) for e in examples]
    rows = [
        {"id": e.id, "words": list(e.words), "prediction": p, "label": r}
        for e, p, r in zip(examples, predictions, references, strict=True)
    ]
    return EntityMetric().compute(predictions=predictions, references=references), rows


def score_text_to_text(
    cfg: ScoringConfig,
    model: T5ForConditionalGeneration,
    tokenizer: Tokenizer,
    spec: TaskSpec,
    split: DevSplit,
    examples: Sequence[Any],
    closed_book: bool,
) -> tuple[dict[str, float], list[dict]]:
    """A T5 model's greedy answers to one dev file, read back as labels and scored like the heads'."""
    features = encode_text_examples(tokenizer, spec, examples, cfg.max_seq_len, closed_book)
    budget = max_target_tokens(tokenizer, spec, cfg.max_answer_length)
    texts = generate_texts(model, tokenizer, features, budget, cfg.batch_size)
    parsed = [parse_output(spec, t) for t in texts]
    invalid = sum(not valid for _, valid in parsed)
    if spec.kind == "span":
        from tasks.downstream.metrics.squad import SquadMetric  # `evaluate`: see score_glue

        answers = [
            {"id": e.id, "prediction_text": str(p)} for e, (p, _) in zip(examples, parsed, strict=True)
        ]
        scores = SquadMetric().compute(predictions=answers, references=squad_references(examples))
        rows = [
            {"id": e.id, "prediction_text": t, "answers": list(e.answer_texts)}
            for e, t in zip(examples, texts, strict=True)
        ]
    else:
        preds = [scored_prediction(spec, p, ok, e.label) for (p, ok), e in zip(parsed, examples, strict=True)]
        scores, rows = glue_scores(spec, split, examples, preds)
        for row, text, (_, ok) in zip(rows, texts, parsed, strict=True):
            row |= {"output": text, "valid": ok}
    suffix = f"_{split.suffix}" if split.suffix else ""
    return scores | {f"invalid_outputs{suffix}": float(invalid)}, rows


def score_with_heads(
    cfg: ScoringConfig, model: MultiTaskModel, tokenizer: Tokenizer, spec: TaskSpec, split: DevSplit,
    examples: Sequence[Any],
) -> tuple[dict[str, float], list[dict]]:  # fmt: skip
    """A BERT-family model's head outputs on one dev file, decoded and scored by the task's kind."""
    features = encode_examples(tokenizer, spec, examples, cfg.max_seq_len, cfg.doc_stride)
    outputs = model_outputs(model, spec.name, features, cfg.batch_size)
    if spec.kind == "span":
        return score_squad(cfg, spec, examples, features, outputs)  # type: ignore[arg-type]
    if spec.kind == "token":
        return score_tagging(spec, examples, features, outputs)  # type: ignore[arg-type]
    return score_glue(spec, split, examples, outputs)


def evaluate_one_task(
    cfg: ScoringConfig, model: nn.Module, tokenizer: Tokenizer, spec: TaskSpec, closed_book: bool = False
) -> tuple[dict[str, float], list[dict], dict[str, int]]:
    """All dev files of one task: (metrics, prediction rows, examples scored per file)."""
    metrics: dict[str, float] = {}
    rows: list[dict] = []
    counts: dict[str, int] = {}
    for split, examples in scored_examples(cfg, spec):
        if isinstance(model, T5ForConditionalGeneration):
            scores, split_rows = score_text_to_text(cfg, model, tokenizer, spec, split, examples, closed_book)
        else:
            scores, split_rows = score_with_heads(cfg, model, tokenizer, spec, split, examples)  # type: ignore[arg-type]
        metrics.update(scores)
        rows.extend(split_rows)
        counts[split.file] = len(examples)
    return metrics, rows, counts


def load_model(directory: Path, specs: Sequence[TaskSpec], max_seq_len: int) -> nn.Module:
    """The fine-tuned model in `directory`, checked to serve every task: a head of the right kind
    (BERT family), or a text format and text-to-text training (T5 family)."""
    config = read_config(directory)
    if config["model_type"] == "t5":
        if "text_to_text" not in config:
            raise MissingHeadError(f"{directory}: a T5 checkpoint that was never fine-tuned text-to-text")
        for spec in specs:
            text_format(spec)
        return load_t5(directory).to(pick_device()).eval()
    model = load_multitask(directory)
    if max_seq_len > model.cfg.max_position:
        raise ValueError(
            f"max_seq_len={max_seq_len} exceeds {directory}'s max_position={model.cfg.max_position}"
        )
    for spec in specs:
        head = model.head_specs.get(spec.name)
        if head is None or head.kind != spec.kind or head.num_labels != spec.num_labels:
            heads = {n: h.to_dict() for n, h in model.head_specs.items()}
            raise MissingHeadError(
                f"{directory}: no {spec.kind} head with {spec.num_labels} outputs "
                f"for task {spec.name!r} (heads: {heads})"
            )
    return model.to(pick_device()).eval()


@dataclass
class SetScores:
    """Dev results of one model set: metrics, prediction rows and examples scored, per task."""

    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: dict[str, list[dict]] = field(default_factory=dict)
    dev_examples: dict[str, dict[str, int]] = field(default_factory=dict)


def evaluate_model_set(
    cfg: ScoringConfig, directory: Path, specs: Sequence[TaskSpec], sink: MetricSink | None = None
) -> SetScores:
    """Score every task with the checkpoint that serves it (see tasks.downstream.modelset)."""
    scores, models, closed_book = SetScores(), {}, {}
    for done, spec in enumerate(specs):
        member = member_dir(directory, spec.name)
        if member not in models:  # a multi-task model serving many tasks is loaded once
            models[member] = load_model(
                member, [s for s in specs if member_dir(directory, s.name) == member], cfg.max_seq_len
            )  # T5: SQuAD inputs as the model was fine-tuned on them
            closed_book[member] = read_config(member).get("text_to_text", {}).get("closed_book_qa", False)
        tokenizer = Tokenizer.from_file(str(member / "tokenizer.json"))
        metrics, rows, counts = evaluate_one_task(cfg, models[member], tokenizer, spec, closed_book[member])
        scores.per_task[spec.name], scores.rows[spec.name], scores.dev_examples[spec.name] = (
            metrics,
            rows,
            counts,
        )
        log.info("%s: %s", spec.name, metrics)
        if sink is not None:
            sink.progress(done + 1, len(specs))
    return scores


def selection_score(per_task: Mapping[str, Mapping[str, float]]) -> float:
    """One number per model set, to rank seeds: the mean over tasks of each task's own headline mean
    (GLUE metrics averaged inside the task as in the GLUE score; SQuAD EM and F1)."""
    return float(np.mean([np.mean([m[k] for k in get_task(t).metric_keys(m)]) for t, m in per_task.items()]))
