"""Tokenization of downstream examples into model inputs, and dynamic-padding collation.

Sentence (pair) tasks go through the tokenizer's own BERT post-processor
(``[CLS] a [SEP] b [SEP]`` with type ids 0/1) and longest-first truncation to
`max_seq_len`. SQuAD contexts are never truncated: each question + context is cut into
overlapping windows ``[CLS] question [SEP] context[k : k + L] [SEP]`` whose starts are
`doc_stride` tokens apart (the original BERT `run_squad` meaning of doc stride), so
together they cover every context token; each window keeps its tokens' character
offsets so predicted spans map back to context text.

The tokenizer follows the project's fixed special ids ([PAD]=0, [CLS]=2, [SEP]=3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Encoding, Tokenizer
from torch import Tensor

from tasks.downstream.glue import GlueExample, glue_path, read_glue_file
from tasks.downstream.squad import SquadExample, read_squad_file, squad_path
from tasks.downstream.tasks import TaskSpec

PAD_ID, CLS_ID, SEP_ID = 0, 2, 3
CharSpan = tuple[int, int]


@dataclass(frozen=True)
class SequenceFeatures:
    """One sentence (pair) as token ids; `label` is a class index or a regression target."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    label: int | float
    example_index: int


@dataclass(frozen=True)
class SpanFeatures:
    """One SQuAD window. `context_offsets[t]` is token t's char span in the context (None off-context).

    `start_position` / `end_position` are token indices of the answer inside this window,
    or 0 (the [CLS] position) when the answer is not wholly inside it.
    """

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    context_offsets: tuple[CharSpan | None, ...]
    start_position: int
    end_position: int
    example_index: int


Example = GlueExample | SquadExample
Features = SequenceFeatures | SpanFeatures


def task_file(data_dir: str | Path, spec: TaskSpec, file: str) -> Path:
    """Where one of a task's files lives in a downstream data dir (glue/<TASK>/ or squad/)."""
    return squad_path(data_dir, spec, file) if spec.kind == "span" else glue_path(data_dir, spec, file)


def read_examples(data_dir: str | Path, spec: TaskSpec, file: str) -> list[Example]:
    """Examples of one task file in a downstream data dir (GLUE tsv or SQuAD JSON, by the task's kind)."""
    if spec.kind == "span":
        version = "2.0" if spec.no_answer else "1.1"
        return list(read_squad_file(squad_path(data_dir, spec, file), version=version))
    return list(read_glue_file(glue_path(data_dir, spec, file), spec))


def encode_examples(
    tokenizer: Tokenizer, spec: TaskSpec, examples: Sequence[Example], max_seq_len: int, doc_stride: int
) -> list[Features]:
    """Model inputs for a task's examples: one row per sentence (pair), or per SQuAD window."""
    if spec.kind == "span":
        return list(encode_squad(tokenizer, examples, max_seq_len, doc_stride))  # type: ignore[arg-type]
    return list(encode_sequences(tokenizer, examples, max_seq_len))  # type: ignore[arg-type]


def check_special_ids(tokenizer: Tokenizer) -> None:
    """Fail early when a tokenizer does not use the project's fixed special-token ids."""
    for token, expected in (("[PAD]", PAD_ID), ("[CLS]", CLS_ID), ("[SEP]", SEP_ID)):
        if tokenizer.token_to_id(token) != expected:
            raise ValueError(
                f"tokenizer maps {token} to {tokenizer.token_to_id(token)}, expected id {expected}"
            )


def encode_sequences(
    tokenizer: Tokenizer, examples: Sequence[GlueExample], max_seq_len: int
) -> list[SequenceFeatures]:
    """Tokenize single sentences or pairs with longest-first truncation to `max_seq_len` tokens."""
    check_special_ids(tokenizer)
    tok = Tokenizer.from_str(tokenizer.to_str())  # private copy: truncation settings are tokenizer state
    tok.enable_truncation(max_seq_len, strategy="longest_first")
    tok.no_padding()
    inputs = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
    encodings = tok.encode_batch(inputs)
    return [
        SequenceFeatures(tuple(enc.ids), tuple(enc.type_ids), e.label, i)
        for i, (e, enc) in enumerate(zip(examples, encodings, strict=True))
    ]


def encode_squad(
    tokenizer: Tokenizer,
    examples: Sequence[SquadExample],
    max_seq_len: int,
    doc_stride: int,
    max_query_len: int = 64,
) -> list[SpanFeatures]:
    """Question + context windows covering every context token (questions cut to `max_query_len`)."""
    check_special_ids(tokenizer)
    questions = tokenizer.encode_batch([e.question for e in examples], add_special_tokens=False)
    contexts = tokenizer.encode_batch([e.context for e in examples], add_special_tokens=False)
    features: list[SpanFeatures] = []
    for i, (example, question, context) in enumerate(zip(examples, questions, contexts, strict=True)):
        q_ids = question.ids[:max_query_len]
        window = max_seq_len - len(q_ids) - 3  # room for context tokens after [CLS] q [SEP] ... [SEP]
        if window < 1:
            raise ValueError(
                f"max_seq_len={max_seq_len} leaves no room for context after question {example.id!r}"
            )
        # an unanswerable (v2.0) question points every window at [CLS], like a window without the answer
        answer = answer_token_span(context, example.answers[0]) if example.answers else None
        for start in window_starts(len(context.ids), window, doc_stride):
            features.append(_window(q_ids, context, start, window, answer, i))
    return features


def window_starts(n_tokens: int, window: int, doc_stride: int) -> list[int]:
    """First context token of each window; the step never exceeds the window, so nothing is skipped."""
    step = max(1, min(doc_stride, window))
    starts = [0]
    while starts[-1] + window < n_tokens:
        starts.append(starts[-1] + step)
    return starts


def answer_token_span(context: Encoding, answer: tuple[str, int]) -> tuple[int, int] | None:
    """Context-token indices (first, last) covering the answer's characters, or None if no token does."""
    text, char_start = answer
    char_end = char_start + len(text)
    inside = [t for t, (a, b) in enumerate(context.offsets) if a < char_end and b > char_start]
    return (inside[0], inside[-1]) if inside else None


def _window(
    q_ids: Sequence[int],
    context: Encoding,
    start: int,
    window: int,
    answer: tuple[int, int] | None,
    index: int,
) -> SpanFeatures:
    """Assemble one ``[CLS] q [SEP] ctx[start:start+window] [SEP]`` row with its answer labels."""
    ctx_ids = context.ids[start : start + window]
    offset = len(q_ids) + 2  # position of the window's first context token
    ids = (CLS_ID, *q_ids, SEP_ID, *ctx_ids, SEP_ID)
    types = (0,) * offset + (1,) * (len(ctx_ids) + 1)
    offsets = (None,) * offset + tuple(context.offsets[start : start + window]) + (None,)
    first, last = 0, 0  # [CLS]: the answer is not (wholly) in this window
    if answer is not None and start <= answer[0] and answer[1] < start + len(ctx_ids):
        first, last = answer[0] - start + offset, answer[1] - start + offset
    return SpanFeatures(ids, types, offsets, first, last, index)


def _padded(rows: Sequence[Sequence[int]], pad: int) -> Tensor:
    """(B, T) long tensor padded to the longest row in this batch (dynamic padding)."""
    width = max(len(r) for r in rows)
    return torch.tensor([[*r, *([pad] * (width - len(r)))] for r in rows], dtype=torch.long)


def collate(features: Sequence[SequenceFeatures | SpanFeatures]) -> dict[str, Tensor]:
    """Stack features of ONE task into a padded batch: ids, type ids, attention mask and labels.

    Labels are ``labels`` (long for classification, float for regression) or
    ``start_positions`` / ``end_positions`` for spans.
    """
    if not features:
        raise ValueError("collate: empty batch")
    batch = {
        "input_ids": _padded([f.input_ids for f in features], PAD_ID),  # (B, T)
        "token_type_ids": _padded([f.token_type_ids for f in features], 0),  # (B, T)
        "attention_mask": _padded([[1] * len(f.input_ids) for f in features], 0),  # (B, T)
    }
    if isinstance(features[0], SpanFeatures):
        batch["start_positions"] = torch.tensor([f.start_position for f in features], dtype=torch.long)
        batch["end_positions"] = torch.tensor([f.end_position for f in features], dtype=torch.long)
    else:
        float_labels = isinstance(features[0].label, float)
        batch["labels"] = torch.tensor(
            [f.label for f in features], dtype=torch.float32 if float_labels else torch.long
        )  # (B,)
    return batch
