"""Downstream tasks as text to text (T5): each example becomes an input text and a target text.

    SST-2  "sst2 sentence: it was great"                  -> "positive"
    STS-B  "stsb sentence1: a man sings sentence2: ..."   -> "3.8"   (the score rounded to 0.2)
    SQuAD  "question: who ... context: ..."              -> the first answer's text
           "question: who ..." (closed-book: no context)

The format of each task is its registry entry's ``TextFormat``. Inputs are cut to the token
budget before their closing </s> (T5 truncates too; a SQuAD answer past the cut cannot be
copied, which is the closed-book setting's difficulty everywhere); targets are never cut. The
model's output text is read back the way T5's postprocessors read it: a class is the exact
target word, STS-B a number, SQuAD the text itself. An output that is no valid label counts as
wrong and is counted (``invalid_outputs``): it is scored as a class other than the reference
(T5's ``f1_score_with_invalid`` rule, applied to every classification metric so accuracy,
F1 and Matthews correlation all see a wrong answer) or, for STS-B, as the score -1.0 (T5's
``string_to_float`` default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer
from torch import Tensor

from models.t5 import T5ForConditionalGeneration
from tasks.data.specials import T5
from tasks.downstream.features import padded
from tasks.downstream.glue import GlueExample
from tasks.downstream.squad import SquadExample
from tasks.downstream.tasks import TaskSpec, TextFormat

PAD_ID, EOS_ID = T5.ids["pad_id"], T5.ids["eos_id"]
IGNORE = -100
INVALID_CLASS, INVALID_SCORE = -1, -1.0
STSB_STEP = 0.2


class NoTextFormatError(ValueError):
    """A task with no text-to-text format (tagging), or one the T5 path cannot score (SQuAD v2)."""


@dataclass(frozen=True)
class TextFeatures:
    """One example as encoder input ids and target ids, each ending with </s>."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    example_index: int


def text_format(spec: TaskSpec) -> TextFormat:
    if spec.text is None or spec.no_answer:
        why = "unanswerable questions need a no-answer target" if spec.no_answer else "it has no TextFormat"
        raise NoTextFormatError(f"task {spec.name!r} cannot be fine-tuned text-to-text: {why}")
    return spec.text


def input_text(spec: TaskSpec, example: GlueExample | SquadExample, closed_book: bool = False) -> str:
    """The T5 input of one example: task prefix, then ``field: text`` for every shown field."""
    fmt = text_format(spec)
    if isinstance(example, SquadExample):
        texts: tuple[str | None, ...] = (example.question, None if closed_book else example.context)
    else:
        texts = (example.text_a, example.text_b)
    parts = [fmt.prefix] if fmt.prefix else []
    parts += [f"{name}: {texts[index]}" for name, index in fmt.fields if texts[index] is not None]
    return " ".join(parts)


def target_text(spec: TaskSpec, example: GlueExample | SquadExample) -> str:
    """The T5 target of one example: its class word, its score rounded to 0.2, or its first answer."""
    fmt = text_format(spec)
    if isinstance(example, SquadExample):
        return example.answer_texts[0] if example.answers else ""
    if spec.kind == "regression":
        return f"{round(float(example.label) / STSB_STEP) * STSB_STEP:.1f}"
    return fmt.targets[int(example.label)]


def parse_output(spec: TaskSpec, text: str) -> tuple[int | float | str, bool]:
    """(prediction, valid) from a decoded output: the class index, the score, or the answer text."""
    text = text.strip()
    if spec.kind == "span":
        return text, True
    if spec.kind == "regression":
        try:
            return float(text), True
        except ValueError:
            return INVALID_SCORE, False
    targets = text_format(spec).targets
    return (targets.index(text), True) if text in targets else (INVALID_CLASS, False)


def scored_prediction(
    spec: TaskSpec, parsed: int | float | str, valid: bool, reference: int | float
) -> int | float:
    """What the GLUE metric is given for one parsed output: itself, or for an invalid class a wrong one."""
    if valid or spec.kind != "classification":
        return parsed  # type: ignore[return-value]
    return (int(reference) + 1) % len(text_format(spec).targets)


def encode_text_examples(
    tokenizer: Tokenizer,
    spec: TaskSpec,
    examples: Sequence[GlueExample | SquadExample],
    max_seq_len: int,
    closed_book: bool = False,
) -> list[TextFeatures]:
    """Token ids of every example's input (cut to ``max_seq_len`` with its </s>) and target."""
    inputs = _ids(tokenizer, [input_text(spec, e, closed_book) for e in examples])
    targets = _ids(tokenizer, [target_text(spec, e) for e in examples])
    return [
        TextFeatures((*i[: max_seq_len - 1], EOS_ID), (*t, EOS_ID), k)
        for k, (i, t) in enumerate(zip(inputs, targets, strict=True))
    ]


def _ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def max_target_tokens(tokenizer: Tokenizer, spec: TaskSpec, max_answer_length: int) -> int:
    """Decoding budget per task: the longest class word (or score) plus </s>; an answer's token limit."""
    if spec.kind == "span":
        return max_answer_length + 1
    words = text_format(spec).targets if spec.kind == "classification" else ("0.0", "2.4", "5.0")
    return max(len(ids) for ids in _ids(tokenizer, list(words))) + 1


def collate_text(features: Sequence[TextFeatures]) -> dict[str, Tensor]:
    """input_ids / attention_mask (B, S) padded with <pad>, labels (B, T) padded with -100."""
    if not features:
        raise ValueError("collate_text: empty batch")
    inputs = padded([f.input_ids for f in features], PAD_ID)
    return {
        "input_ids": inputs,
        "attention_mask": (inputs != PAD_ID).long(),
        "labels": padded([f.labels for f in features], IGNORE),
    }


def generate_texts(
    model: T5ForConditionalGeneration,
    tokenizer: Tokenizer,
    features: Sequence[TextFeatures],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy outputs of every feature, decoded to text (up to </s>), in input order; batches are
    formed in length order so little of each is padding."""
    device, eos, pad = next(model.parameters()).device, model.cfg.eos_id, model.cfg.pad_id
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    texts: list[str] = [""] * len(features)
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        batch = collate_text([features[i] for i in chunk])
        out = model.generate(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), max_new_tokens
        )
        for row, i in zip(out.tolist(), chunk, strict=True):
            ids = row[: row.index(eos)] if eos in row else row
            texts[i] = tokenizer.decode([t for t in ids if t != pad])
    return texts
