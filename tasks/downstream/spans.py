"""n-best answer-span decoding over all windows of a SQuAD question.

For each window, the `n_best` highest start logits and end logits over CONTEXT tokens
are paired; a pair is kept when end >= start and the span is at most
`max_answer_length` tokens. A candidate's score is start logit + end logit (the log of
the product of the two independent softmaxes, up to the window's normaliser). The same
answer text reached twice (overlapping windows, or a repeated phrase) counts once, at its best
score, so the n-best list holds n different answers.
Spans map back to text through the tokens' character offsets, so the answer is an exact
slice of the original context (original casing and spacing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.downstream.features import SpanFeatures


@dataclass(frozen=True)
class SpanCandidate:
    """One candidate answer: its text, its [start, end) characters in the context, and its score."""

    text: str
    char_start: int
    char_end: int
    score: float


def _top_context_positions(logits: np.ndarray, is_context: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits among context positions, best first."""
    positions = np.flatnonzero(is_context)
    order = np.argsort(-logits[positions], kind="stable")[:k]
    return positions[order]


def window_candidates(
    window: SpanFeatures,
    context: str,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int,
    max_answer_length: int,
) -> list[SpanCandidate]:
    """Valid (start, end) pairs of one window. Logits are (T,) with T >= len(window.input_ids)."""
    is_context = np.array([o is not None for o in window.context_offsets])  # (T_window,)
    starts = _top_context_positions(start_logits[: len(is_context)], is_context, n_best)
    ends = _top_context_positions(end_logits[: len(is_context)], is_context, n_best)
    candidates = []
    for s in starts:
        for e in ends:
            if e < s or e - s + 1 > max_answer_length:
                continue
            a, b = window.context_offsets[s][0], window.context_offsets[e][1]
            candidates.append(SpanCandidate(context[a:b], a, b, float(start_logits[s] + end_logits[e])))
    return candidates


def best_spans(
    windows: Sequence[SpanFeatures],
    context: str,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[SpanCandidate]:
    """The n best distinct answer texts of one question over all its windows, best first.

    Returns an empty list only when no window has a valid span (e.g. max_answer_length
    rules out every pair); callers then predict the empty string.
    """
    best: dict[str, SpanCandidate] = {}
    for window, s_logits, e_logits in zip(windows, start_logits, end_logits, strict=True):
        for cand in window_candidates(window, context, s_logits, e_logits, n_best, max_answer_length):
            if cand.text not in best or cand.score > best[cand.text].score:
                best[cand.text] = cand
    return sorted(best.values(), key=lambda c: -c.score)[:n_best]
