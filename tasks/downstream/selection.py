"""The selection split: a fixed, seeded slice of each task's TRAIN set, kept out of fine-tuning.

A sweep ranks its trials on this slice, so the dev sets stay unseen until the winner is
scored on them once (tuning on the dev set it reports would make the report optimistic).
Fine-tuning with ``hold_out`` drops exactly the examples evaluation with
``split="selection"`` scores: both call `split_examples` with the same `SelectionSplit`.

The slice depends only on the task's name, the train file's example count and the split's
size and seed, never on the order trials run in. Examples are held out one by one; a SQuAD
question held out may share its paragraph with training questions (its answer never is trained).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class SelectionSplit(BaseModel):
    """How many train examples of each task are held out for model selection, drawn with which seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(
        200, ge=1, le=10**6, description="Examples held out per task (at most a quarter of it)."
    )
    seed: int = Field(0, ge=0, description="Seed of the held-out draw (fixed across a sweep's trials).")


class SelectionSplitError(ValueError):
    """A task's train set is too small to hold out the selection split and still train."""


def selection_indices(n_examples: int, task: str, split: SelectionSplit) -> np.ndarray:
    """Sorted indices of the held-out examples among ``n_examples`` (a task's train file, in order)."""
    if split.size * 4 > n_examples:
        raise SelectionSplitError(
            f"{task}: holding out {split.size} of {n_examples} train examples leaves too few to train "
            f"(at most a quarter, {n_examples // 4}, may be held out); lower selection size"
        )
    rng = np.random.default_rng([split.seed, zlib.crc32(task.encode())])
    return np.sort(rng.choice(n_examples, split.size, replace=False))


def split_examples(examples: Sequence[T], task: str, split: SelectionSplit) -> tuple[list[T], list[T]]:
    """``(kept for training, held out for selection)``, both in file order."""
    held = set(selection_indices(len(examples), task, split).tolist())
    kept = [e for i, e in enumerate(examples) if i not in held]
    return kept, [e for i, e in enumerate(examples) if i in held]
