"""Training metrics between two log lines: means per metric, tokens/s and MFU."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Window:
    """Running sums between two log lines.

    Each metric is averaged over the steps that reported it: a multi-task objective reports
    ``loss/<task>`` only on that task's steps, and dividing by every step would shrink it.
    """

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, metrics: Mapping[str, float], tokens: int, flops: float = 0.0) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1
        self.steps += 1
        self.tokens += tokens
        self.flops += flops

    def summary(self, lr: float, peak_flops: float | None = None) -> dict[str, float]:
        """Means, lr, tokens/s and MFU (this rank's FLOP/s over one device's peak).

        tokens/s is all ranks': fit() passes ``add`` the tokens of every rank."""
        out = {name: total / self.counts[name] for name, total in self.sums.items()}
        out["lr"] = lr
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        if self.tokens:
            out["tokens_per_s"] = self.tokens / elapsed
        if self.flops and peak_flops:
            out["mfu"] = self.flops / elapsed / peak_flops
        return out


def count_tokens(batch: Mapping[str, Any]) -> int:
    """Real tokens in a batch (non-pad when an attention mask is present); 0 if it has no input_ids."""
    if "attention_mask" in batch and isinstance(batch["attention_mask"], Tensor):
        return int(batch["attention_mask"].sum())
    ids = batch.get("input_ids")
    return ids.numel() if isinstance(ids, Tensor) else 0
