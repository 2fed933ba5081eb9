"""Dropout whose CPU mask costs a third of ``nn.Dropout``'s, drawn from 16 random bits per element.

``nn.Dropout`` on CPU draws one Bernoulli sample per element (``bernoulli_``): in a BERT-mini
pre-training step with BERT's 0.1 dropout that was a fifth of the step. Here one 64-bit draw
of the default generator gives four 16-bit uniforms, and an element is dropped when its
uniform falls below ``round(p * 65536)``. The drop rate is therefore ``p`` rounded to 1/65536
(0.1 becomes 0.100006) and the kept values are scaled by the inverse of that rounded keep rate,
so the expectation is exactly preserved. On CUDA, PyTorch's own (Philox) dropout is already
fast and is used unchanged. The default generator is the one drawn from, so seeding and the
checkpointed RNG state make runs and resumes exact, as with ``nn.Dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = 1 << 16  # 16-bit uniforms


def keep_threshold(p: float) -> tuple[int, float]:
    """(int16 threshold, scale): keep an element whose int16 uniform is >= the threshold."""
    dropped = round(p * LEVELS)
    return dropped - LEVELS // 2, LEVELS / (LEVELS - dropped)


def random_int16(like: Tensor) -> Tensor:
    """Uniform int16 values shaped like ``like``, four per 64-bit draw of the default generator."""
    n = like.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=like.device)
    return words.view(torch.int16)[:n].view(like.shape)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout of ``x`` with drop rate ``p`` (identity when not training or p rounds to 0)."""
    if not training or p == 0.0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, training=True)
    if p >= 1.0:
        return x * 0.0
    threshold, scale = keep_threshold(p)
    if threshold == -LEVELS // 2:  # p below 1/131072: nothing is ever dropped
        return x
    return x * ((random_int16(x) >= threshold) * scale).to(x.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` with the fast CPU mask above (same ``p``, same train/eval behaviour)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
