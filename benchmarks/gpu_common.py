"""What the steps of benchmarks/gpu_check.py share: budgets, the check runner, shapes, synthetic batches.

Imported only after gpu_check.py's bootstrap (it imports torch and, through the engine, pydantic).
"""

from __future__ import annotations

import datetime
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.config import SIZES, EncoderConfig

IGNORE = -100
CLS, SEP, MASK, FIRST_WORD = 2, 3, 4, 5  # special ids of the synthetic batches ([PAD] 0, [UNK] 1)


def now() -> str:
    """UTC timestamp, seconds resolution, ISO 8601."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


@dataclass
class Budget:
    """A deadline on the monotonic clock: a step's own budget, capped by the whole run's."""

    deadline: float

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def lacks(self, need_s: float) -> str | None:
        """None when ``need_s`` seconds are left, else the reason to skip."""
        left = self.left()
        if left >= need_s:
            return None
        return f"skipped: the step's time budget has {max(left, 0.0):.0f} s left; this needs ~{need_s:.0f} s"


@dataclass
class Context:
    """What every check gets: where it runs, how long it may take, how to save the JSON."""

    device: torch.device
    dry: bool
    budget: Budget
    workdir: Path
    script: Path  # gpu_check.py, for the fresh worker processes
    child_env: dict[str, str]
    write: Callable[[], None]
    notes: dict[str, Any] = field(default_factory=dict)  # facts one check hands the next

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        """The pre-training precision of this device: bf16 autocast on CUDA, fp32 in the CPU dry run."""
        return "bf16" if self.cuda else "fp32"


def run_check(
    table: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]], ctx: Context, need_s: float
) -> dict[str, Any]:
    """Run one check into ``table[key]``: skipped (with a reason) when the budget lacks ``need_s``.

    Every entry has ``passed`` (True / False / None when it could not run) and ``reason`` (why it
    did not run, or a note on what ran instead), plus its start time and seconds; the JSON is
    written after each check. An exception is a failed check (the traceback's tail is kept).
    """
    started, clock = now(), time.perf_counter()
    skip = ctx.budget.lacks(need_s)
    if skip is not None:
        result: dict[str, Any] = {"passed": None, "reason": skip}
    else:
        try:
            result = fn()
        except Exception as exc:  # a check's failure must not stop the others
            result = {
                "passed": False,
                "reason": f"error: {type(exc).__name__}: {str(exc)[:500]}",
                "traceback": traceback.format_exc()[-2000:],
            }
    result = {"passed": result.pop("passed", None), "reason": result.pop("reason", None), **result}
    result |= {"started": started, "seconds": round(time.perf_counter() - clock, 2)}
    table[key] = result
    ctx.write()
    return result


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(x: Tensor, ref: Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 (inf when x has a NaN or inf)."""
    x, ref = x.detach().double(), ref.detach().double()
    if not torch.isfinite(x).all():
        return math.inf
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def max_abs(x: Tensor, ref: Tensor) -> float:
    return float((x.detach().float() - ref.detach().float()).abs().max())


def check_config(dry: bool, vocab: int | None = None, **overrides: Any) -> EncoderConfig:
    """The correctness checks' encoder, without dropout: ``mini`` (4 x 256) on CUDA, 2 x 64 in the dry run."""
    shape = (
        {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}
        if dry
        else SIZES["mini"]
    )
    return EncoderConfig(
        vocab_size=vocab or (512 if dry else 8192),
        **shape,
        dropout=0.0,
        attention_dropout=0.0,
        **overrides,
    )


@dataclass
class SyntheticMLM:
    """Deterministic MLM batches: ``batch(step)`` depends only on (seed, step), like the engine's sources.

    Each row is [CLS] + a short random motif repeated + [SEP], drawn from ``words`` ids only, so
    the loss falls within a few steps (towards ln(words), and below as the copies are learned): a
    check that compares two runs' losses then compares something that moves. Exactly ``mask_per_row``
    positions per row are masked (80/10/10), so every batch has the same shapes and a compiled
    model never recompiles for a new masked count.
    """

    vocab: int
    batch_size: int
    seq_len: int
    seed: int = 0
    motif: int = 8
    words: int = 64  # ids drawn from [FIRST_WORD, FIRST_WORD + words)

    @property
    def mask_per_row(self) -> int:
        return max(1, round(0.15 * (self.seq_len - 2)))

    def batch(self, step: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        B, T, k = self.batch_size, self.seq_len, self.mask_per_row
        top = min(self.vocab, FIRST_WORD + self.words)
        motif = torch.randint(FIRST_WORD, top, (B, self.motif), generator=g)
        ids = motif.repeat(1, math.ceil(T / self.motif))[:, :T].clone()
        ids[:, 0], ids[:, -1] = CLS, SEP
        positions = torch.rand(B, T - 2, generator=g).topk(k, dim=1).indices + 1  # (B, k), not CLS/SEP
        labels = torch.full_like(ids, IGNORE).scatter(1, positions, ids.gather(1, positions))
        roll = torch.rand(B, k, generator=g)
        random_ids = torch.randint(FIRST_WORD, self.vocab, (B, k), generator=g)
        kept = ids.gather(1, positions)
        replaced = torch.where(
            roll < 0.8, torch.full_like(kept, MASK), torch.where(roll < 0.9, random_ids, kept)
        )
        return {
            "input_ids": ids.scatter(1, positions, replaced),
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
            "labels": labels,
        }


def random_batches(vocab: int, batch: int, seq_len: int, n: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """Throughput batches: random full rows (like packed data), exactly 15 % masked per row."""
    source = SyntheticMLM(vocab, batch, seq_len, seed=seed, words=vocab)
    return [source.batch(i) for i in range(n)]
