"""Dynamic MLM masking, applied per batch and never stored: which tokens, then BERT's 80/10/10.

Each call draws a fresh mask from the caller's ``torch.Generator``; seeding that generator
from (seed, step) makes every batch's mask reproducible (exact resume) while every epoch sees
different masks for the same rows (the point of dynamic masking, RoBERTa-style).

Selection strategies (what gets predicted):
- ``token``: each non-special token independently with probability ``mask_rate`` (BERT).
- ``word``: whole-word masking; a word is chosen with probability ``mask_rate`` and then all its
  WordPiece pieces are, so the model cannot fill "##ing" from the visible "play".
- ``span``: SpanBERT; contiguous runs of whole words with geometric lengths (p=0.2, at most
  10 words, mean 3.8) until ``mask_rate`` of the tokens are chosen.
Words come from an ``is_continuation`` lookup over the vocabulary (True for "##" pieces).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor

IGNORE_INDEX = -100  # label value cross-entropy skips: position not predicted
Strategy = Literal["token", "word", "span"]


def mask_tokens(
    input_ids: Tensor,
    *,
    generator: torch.Generator,
    mask_rate: float = 0.15,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    replace_prob: float = 0.8,
    random_prob: float = 0.1,
    strategy: Strategy = "token",
    is_continuation: Tensor | None = None,
    span_p: float = 0.2,
    span_max: int = 10,
) -> tuple[Tensor, Tensor]:
    """Select ~mask_rate of the non-special tokens; return (masked input_ids, labels).

    Of the selected tokens, ``replace_prob`` become [MASK], ``random_prob`` a random non-special
    token and the rest stay unchanged (so the model cannot tell "unmasked" from "must copy").
    ``labels`` holds the original id at selected positions and -100 elsewhere. Special tokens
    ([PAD], [CLS], [SEP], [MASK], ...) are never selected nor drawn as random replacements.
    """
    check_rates(mask_rate, replace_prob, random_prob)
    specials = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    candidates = ~torch.isin(input_ids, specials)  # (B, T) bool: tokens that may be selected
    if strategy == "token":
        draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # (B, T)
        selected = candidates & (draw < mask_rate)
    elif strategy == "word":
        selected = select_whole_words(input_ids, candidates, is_continuation, generator, mask_rate)
    elif strategy == "span":
        selected = select_spans(
            input_ids, candidates, is_continuation, generator, mask_rate, span_p, span_max
        )
    else:
        raise ValueError(f"masking strategy must be token, word or span, got {strategy!r}")
    return apply_mask(
        input_ids, selected, specials, generator, mask_id, vocab_size, replace_prob, random_prob
    )


def apply_mask(
    input_ids: Tensor,
    selected: Tensor,
    specials: Tensor,
    generator: torch.Generator,
    mask_id: int,
    vocab_size: int,
    replace_prob: float,
    random_prob: float,
) -> tuple[Tensor, Tensor]:
    """80/10/10 on the ``selected`` (B, T) positions: (masked ids, labels with -100 elsewhere)."""
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    how = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # (B, T): which rule
    to_mask = selected & (how < replace_prob)
    to_random = selected & (how >= replace_prob) & (how < replace_prob + random_prob)
    random_ids = random_regular_ids(input_ids.shape, vocab_size, specials, generator)  # (B, T)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def word_starts(input_ids: Tensor, candidates: Tensor, is_continuation: Tensor | None) -> Tensor:
    """(B, T) True where a maskable word begins: a non-"##" piece, or a piece after a special token."""
    if is_continuation is None:
        return candidates.clone()
    if is_continuation.dtype != torch.bool or is_continuation.dim() != 1:
        raise ValueError("is_continuation must be a 1-D bool tensor over the vocabulary")
    continues = is_continuation.to(input_ids.device)[input_ids]  # (B, T)
    previous = torch.nn.functional.pad(candidates[:, :-1], (1, 0), value=False)  # candidate to the left?
    return candidates & (~continues | ~previous)


def select_whole_words(
    input_ids: Tensor,
    candidates: Tensor,
    is_continuation: Tensor | None,
    generator: torch.Generator,
    mask_rate: float,
) -> Tensor:
    """Choose each word with probability mask_rate, then every piece of it (vectorised)."""
    if is_continuation is None:
        raise ValueError("whole-word masking needs an is_continuation lookup over the vocabulary")
    starts = word_starts(input_ids, candidates, is_continuation)  # (B, T)
    T = input_ids.size(1)
    columns = torch.arange(T, device=input_ids.device).expand_as(input_ids)  # (B, T)
    start_of_word = torch.where(starts, columns, 0).cummax(dim=1).values  # (B, T): where my word began
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # one per start
    return candidates & (draw.gather(1, start_of_word) < mask_rate)


def span_length_probs(p: float, max_len: int) -> Tensor:
    """Geometric(p) over 1..max_len, renormalised (SpanBERT's truncated distribution)."""
    lengths = torch.arange(1, max_len + 1, dtype=torch.float64)
    probs = p * (1 - p) ** (lengths - 1)
    return (probs / probs.sum()).float()


def select_spans(
    input_ids: Tensor,
    candidates: Tensor,
    is_continuation: Tensor | None,
    generator: torch.Generator,
    mask_rate: float,
    p: float = 0.2,
    max_len: int = 10,
) -> Tensor:
    """SpanBERT masking: whole-word spans of geometric length until mask_rate of each row's tokens.

    Spans never cross a special token (so never two documents of a packed row); a span that would
    overshoot the row's budget is cut at the word where the budget is met.
    """
    if not 0.0 < p <= 1.0 or max_len < 1:
        raise ValueError(f"span masking needs 0 < span_p <= 1 and span_max >= 1, got {p}, {max_len}")
    starts = word_starts(input_ids, candidates, is_continuation).cpu()
    cand = candidates.cpu()
    probs = span_length_probs(p, max_len)
    selected = torch.zeros_like(cand)
    for row in range(input_ids.size(0)):
        selected[row] = select_row_spans(cand[row], starts[row], probs, generator, mask_rate)
    return selected.to(input_ids.device)


def select_row_spans(
    candidates: Tensor, starts: Tensor, probs: Tensor, generator: torch.Generator, mask_rate: float
) -> Tensor:
    """One row of select_spans; words are runs [start_i, start_{i+1}) clipped to the candidates."""
    word_begin = starts.nonzero().squeeze(1)  # (W,)
    chosen = torch.zeros_like(candidates)
    n_tokens = int(candidates.sum())
    budget = max(1, round(mask_rate * n_tokens)) if n_tokens else 0
    if budget == 0:
        return chosen
    word_end = word_ends(candidates, word_begin)  # (W,) exclusive
    attempts = 4 * budget
    lengths = torch.multinomial(probs, attempts, replacement=True, generator=generator) + 1  # (attempts,)
    first_words = torch.randint(len(word_begin), (attempts,), generator=generator)
    masked = 0
    for length, first in zip(lengths.tolist(), first_words.tolist(), strict=True):
        w = first
        for _ in range(length):
            if w >= len(word_begin) or masked >= budget:
                break
            begin, end = int(word_begin[w]), int(word_end[w])
            masked += int((~chosen[begin:end]).sum())
            chosen[begin:end] = True
            if w + 1 < len(word_begin) and int(word_begin[w + 1]) != end:
                break  # a special token separates the next word: the span stops here
            w += 1
        if masked >= budget:
            break
    return chosen


def word_ends(candidates: Tensor, word_begin: Tensor) -> Tensor:
    """(W,) exclusive end of each word: the next word's start or the end of its run of candidates."""
    T = candidates.size(0)
    stops = torch.cat([(~candidates).nonzero().squeeze(1), torch.tensor([T])])  # sorted non-candidates
    run_end = stops[torch.searchsorted(stops, word_begin)]  # first non-candidate after each start
    next_begin = torch.cat([word_begin[1:], torch.tensor([T])])
    return torch.minimum(next_begin, run_end)


def random_regular_ids(
    shape: torch.Size, vocab_size: int, specials: Tensor, generator: torch.Generator
) -> Tensor:
    """Uniform draws from the vocabulary minus the special ids, shaped like ``shape``."""
    vocab = torch.arange(vocab_size, device=specials.device, dtype=specials.dtype)
    regular = vocab[~torch.isin(vocab, specials)]  # (V - n_special,)
    if regular.numel() == 0:
        raise ValueError(f"vocabulary of {vocab_size} ids has no non-special tokens to draw from")
    picks = torch.randint(regular.numel(), shape, generator=generator, device=specials.device)
    return regular[picks]


def continuation_lookup(vocab: dict[str, int], vocab_size: int, prefix: str = "##") -> Tensor:
    """(V,) bool: True for WordPiece continuation pieces ("##ing"), from a token -> id mapping."""
    lookup = torch.zeros(vocab_size, dtype=torch.bool)
    for token, index in vocab.items():
        if token.startswith(prefix) and len(token) > len(prefix) and 0 <= index < vocab_size:
            lookup[index] = True
    return lookup


def check_rates(mask_rate: float, replace_prob: float, random_prob: float) -> None:
    """Reject probabilities that do not describe a valid masking scheme."""
    if not 0.0 < mask_rate < 1.0:
        raise ValueError(f"mask_rate must be in (0, 1), got {mask_rate}")
    if replace_prob < 0 or random_prob < 0 or replace_prob + random_prob > 1.0:
        raise ValueError(
            f"replace_prob ({replace_prob}) and random_prob ({random_prob}) must be >= 0 and sum to <= 1"
        )
