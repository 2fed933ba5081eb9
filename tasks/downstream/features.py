"""Tokenization of downstream examples into model inputs, and dynamic-padding collation.

Sentence (pair) tasks go through the tokenizer's own BERT post-processor
(``[CLS] a [SEP] b [SEP]`` with type ids 0/1) and longest-first truncation to
`max_seq_len`. SQuAD contexts are never truncated: each question + context is cut into
overlapping windows ``[CLS] question [SEP] context[k : k + L] [SEP]`` whose starts are
`doc_stride` tokens apart (the original BERT `run_squad` meaning of doc stride), so
together they cover every context token; each window keeps its tokens' character
offsets so predicted spans map back to context text.

Tagging (NER) sentences are split into words by the file and into sub-words by the tokenizer:
the first sub-word of each word carries the word's tag and the rest are ignored by the loss
(`IGNORE`). A sentence longer than `max_seq_len` is cut into overlapping windows the same
way as a SQuAD context, and each word is predicted by the window where it has the most
context on both sides (`TokenFeatures.owned`), so nothing is truncated and every word gets
exactly one prediction.

The tokenizer follows the project's fixed special ids ([PAD]=0, [CLS]=2, [SEP]=3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Encoding, Tokenizer
from torch import Tensor

from tasks.downstream.conll import TokenExample, conll_path, read_conll_file
from tasks.downstream.glue import GlueExample, glue_path, read_glue_file
from tasks.downstream.squad import SquadExample, read_squad_file, squad_path
from tasks.downstream.tasks import TaskSpec

PAD_ID, CLS_ID, SEP_ID = 0, 2, 3
IGNORE = -100  # label of positions a tagging loss skips (specials, non-first sub-words), as in PyTorch
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


@dataclass(frozen=True)
class TokenFeatures:
    """One window of a tagged sentence, position by position.

    `labels[t]` is the tag index of the word whose first sub-word sits at t, else `IGNORE`;
    `word_ids[t]` is that word's index in the sentence (-1 elsewhere); `owned[t]` marks the
    words this window predicts (each word is owned by exactly one window of its sentence).
    """

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    labels: tuple[int, ...]
    word_ids: tuple[int, ...]
    owned: tuple[bool, ...]
    example_index: int


Example = GlueExample | SquadExample | TokenExample
Features = SequenceFeatures | SpanFeatures | TokenFeatures


def task_file(data_dir: str | Path, spec: TaskSpec, file: str) -> Path:
    """Where one of a task's files lives in a downstream data dir (glue/<TASK>/, squad/ or ner/...)."""
    if spec.kind == "span":
        return squad_path(data_dir, spec, file)
    return conll_path(data_dir, spec, file) if spec.kind == "token" else glue_path(data_dir, spec, file)


def read_examples(data_dir: str | Path, spec: TaskSpec, file: str) -> list[Example]:
    """Examples of one task file in a downstream data dir (GLUE tsv, SQuAD JSON or CoNLL, by kind)."""
    if spec.kind == "span":
        version = "2.0" if spec.no_answer else "1.1"
        return list(read_squad_file(squad_path(data_dir, spec, file), version=version))
    if spec.kind == "token":
        return list(read_conll_file(conll_path(data_dir, spec, file), spec))
    return list(read_glue_file(glue_path(data_dir, spec, file), spec))


def encode_examples(
    tokenizer: Tokenizer, spec: TaskSpec, examples: Sequence[Example], max_seq_len: int, doc_stride: int
) -> list[Features]:
    """Model inputs for a task's examples: one row per sentence (pair), or per SQuAD / tagging window."""
    if spec.kind == "span":
        return list(encode_squad(tokenizer, examples, max_seq_len, doc_stride))  # type: ignore[arg-type]
    if spec.kind == "token":
        return list(encode_tagged(tokenizer, spec, examples, max_seq_len, doc_stride))  # type: ignore[arg-type]
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


def encode_tagged(
    tokenizer: Tokenizer, spec: TaskSpec, examples: Sequence[TokenExample], max_seq_len: int, doc_stride: int
) -> list[TokenFeatures]:
    """``[CLS] sub-words [SEP]`` windows of every sentence, first sub-words labelled (see module doc)."""
    check_special_ids(tokenizer)
    window = max_seq_len - 2
    encodings = tokenizer.encode_batch(
        [list(e.words) for e in examples], is_pretokenized=True, add_special_tokens=False
    )
    features: list[TokenFeatures] = []
    for i, (example, enc) in enumerate(zip(examples, encodings, strict=True)):
        word_of = enc.word_ids
        first = [w is not None and (t == 0 or word_of[t - 1] != w) for t, w in enumerate(word_of)]
        starts = window_starts(len(enc.ids), window, doc_stride)
        owner = _max_context_owner(len(enc.ids), starts, window)
        for k, start in enumerate(starts):
            span = range(start, min(start + window, len(enc.ids)))
            labels = [spec.labels.index(example.tags[word_of[t]]) if first[t] else IGNORE for t in span]
            word_ids = [word_of[t] if first[t] else -1 for t in span]
            owned = [first[t] and owner[t] == k for t in span]
            features.append(
                TokenFeatures(
                    input_ids=(CLS_ID, *enc.ids[start : span.stop], SEP_ID),
                    token_type_ids=(0,) * (len(span) + 2),
                    labels=(IGNORE, *labels, IGNORE),
                    word_ids=(-1, *word_ids, -1),
                    owned=(False, *owned, False),
                    example_index=i,
                )
            )
    return features


def _max_context_owner(n_tokens: int, starts: Sequence[int], window: int) -> list[int]:
    """For each token, the window (index into `starts`) where it has the most context on its nearer side.

    BERT's run_squad rule for overlapping windows: score min(tokens before, tokens after)
    inside the window, and the earliest window wins a tie.
    """
    owner, best = [0] * n_tokens, [-1] * n_tokens
    for k, start in enumerate(starts):
        stop = min(start + window, n_tokens)
        for t in range(start, stop):
            context = min(t - start, stop - 1 - t)
            if context > best[t]:
                owner[t], best[t] = k, context
    return owner


def padded(rows: Sequence[Sequence[int]], pad: int) -> Tensor:
    """(B, T) long tensor padded to the longest row in this batch (dynamic padding)."""
    width = max(len(r) for r in rows)
    return torch.tensor([[*r, *([pad] * (width - len(r)))] for r in rows], dtype=torch.long)


def collate(features: Sequence[Features]) -> dict[str, Tensor]:
    """Stack features of ONE task into a padded batch: ids, type ids, attention mask and labels.

    Labels are ``labels`` (long for classification, float for regression, (B, T) long with
    `IGNORE` padding for tagging) or ``start_positions`` / ``end_positions`` for spans.
    """
    if not features:
        raise ValueError("collate: empty batch")
    batch = {
        "input_ids": padded([f.input_ids for f in features], PAD_ID),  # (B, T)
        "token_type_ids": padded([f.token_type_ids for f in features], 0),  # (B, T)
        "attention_mask": padded([[1] * len(f.input_ids) for f in features], 0),  # (B, T)
    }
    if isinstance(features[0], TokenFeatures):
        batch["labels"] = padded([f.labels for f in features], IGNORE)  # (B, T)
    elif isinstance(features[0], SpanFeatures):
        batch["start_positions"] = torch.tensor([f.start_position for f in features], dtype=torch.long)
        batch["end_positions"] = torch.tensor([f.end_position for f in features], dtype=torch.long)
    else:
        float_labels = isinstance(features[0].label, float)
        batch["labels"] = torch.tensor(
            [f.label for f in features], dtype=torch.float32 if float_labels else torch.long
        )  # (B,)
    return batch
