"""Dynamic MLM masking (BERT's 80/10/10 rule), applied per batch and never stored.

Each call draws a fresh mask from the caller's ``torch.Generator``; seeding that generator
from (seed, step) makes every batch's mask reproducible (exact resume) while every epoch sees
different masks for the same rows (the point of dynamic masking, RoBERTa-style).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

IGNORE_INDEX = -100  # label value cross-entropy skips: position not predicted


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
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # (B, T)
    selected = candidates & (draw < mask_rate)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    how = torch.rand(
        input_ids.shape, generator=generator, device=input_ids.device
    )  # (B, T): which of 80/10/10
    to_mask = selected & (how < replace_prob)
    to_random = selected & (how >= replace_prob) & (how < replace_prob + random_prob)
    random_ids = random_regular_ids(input_ids.shape, vocab_size, specials, generator)  # (B, T)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


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


def check_rates(mask_rate: float, replace_prob: float, random_prob: float) -> None:
    """Reject probabilities that do not describe a valid masking scheme."""
    if not 0.0 < mask_rate < 1.0:
        raise ValueError(f"mask_rate must be in (0, 1), got {mask_rate}")
    if replace_prob < 0 or random_prob < 0 or replace_prob + random_prob > 1.0:
        raise ValueError(
            f"replace_prob ({replace_prob}) and random_prob ({random_prob}) must be >= 0 and sum to <= 1"
        )
