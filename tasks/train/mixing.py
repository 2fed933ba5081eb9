"""T5-style task mixing: how often each task's batch is drawn, as a deterministic schedule.

Every fine-tuning step trains ONE task's batch. Which task is drawn from a mixing
distribution over tasks (examples-proportional with a cap K by default, T5 §3.5.2): rate ∝
min(n, K), so large tasks do not drown small ones; "temperature" flattens it further (rate ∝
min(n, K)^(1/T)) and "equal" ignores sizes. The whole schedule of (task, example indices)
is drawn up front from the seed, each task walking its own seeded epoch permutations, so
``batch(step)`` is a pure function of (seed, step) and the shared `fit()` resumes exactly.

``group_by_length`` (HF Trainer's option of that name) cuts each task's stream into
megabatches of `MEGABATCH` batches, sorts each megabatch by input length and shuffles the
order of its batches: rows of one batch have similar lengths, so little of a dynamically
padded batch is padding (`padding_waste` measures it), while the data each epoch sees and
the task mixture are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import Tensor

from tasks.downstream.features import Features, collate
from tasks.train.finetune_config import Mixing

MEGABATCH = 50  # batches per length-sorted group, as HF's LengthGroupedSampler


def mixing_rates(
    sizes: Mapping[str, int], mixing: Mixing, cap_k: int, temperature: float
) -> dict[str, float]:
    """Probability of drawing each task at a step (sums to 1)."""
    if mixing == "equal":
        weights = {t: 1.0 for t in sizes}
    else:
        power = 1.0 if mixing == "proportional" else 1.0 / temperature
        weights = {t: float(min(n, cap_k)) ** power for t, n in sizes.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


class MultiTaskBatchSource:
    """Deterministic single-task batches: ``batch(step)`` depends only on (seed, step).

    The schedule for steps 0..num_batches-1 is drawn up front: the task of each step
    from the mixing rates, and each task's example indices from consecutive seeded
    permutations of its features (a fresh permutation per epoch of that task).
    """

    def __init__(
        self,
        features: Mapping[str, Sequence[Features]],
        rates: Mapping[str, float],
        batch_size: int,
        num_batches: int,
        seed: int,
        group_by_length: bool = False,
        collate_fn: Callable[[Sequence], dict[str, Tensor]] = collate,
    ) -> None:
        self.features = {t: list(f) for t, f in features.items()}
        self.collate = collate_fn  # the model family's batching (heads' features or text-to-text)
        self.tasks = list(self.features)
        empty = [t for t in self.tasks if not self.features[t]]
        if empty:
            raise ValueError(f"no training features for task(s) {empty}")
        picks = np.random.default_rng([seed, 0]).choice(
            len(self.tasks), size=num_batches, p=[rates[t] for t in self.tasks]
        )  # (num_batches,) task index per step
        self.schedule: list[tuple[str, np.ndarray]] = self._assign_indices(
            picks, batch_size, seed, group_by_length
        )

    def _assign_indices(
        self, picks: np.ndarray, batch_size: int, seed: int, group_by_length: bool
    ) -> list[tuple[str, np.ndarray]]:
        """Each task's epoch permutations cut into batches (length-grouped if asked), in step order."""
        streams: dict[int, np.ndarray] = {}
        for k, name in enumerate(self.tasks):
            needed = int((picks == k).sum()) * batch_size
            n = len(self.features[name])
            rng = np.random.default_rng([seed, 1 + k])
            epochs = [rng.permutation(n) for _ in range(max(1, math.ceil(needed / n)))]
            stream = np.concatenate(epochs)[:needed].reshape(-1, batch_size)  # (steps of task k, B)
            if group_by_length:
                lengths = np.array([len(f.input_ids) for f in self.features[name]])
                stream = length_grouped(stream, lengths, np.random.default_rng([seed, 1 + k, 1]))
            streams[k] = stream
        cursor = dict.fromkeys(streams, 0)
        schedule = []
        for k in picks.tolist():
            schedule.append((self.tasks[k], streams[k][cursor[k]]))
            cursor[k] += 1
        return schedule

    def __len__(self) -> int:
        return len(self.schedule)

    def batch(self, step: int) -> dict[str, Tensor | str]:
        """The padded batch of `step` plus ``task``: its task name."""
        if not 0 <= step < len(self.schedule):
            raise IndexError(
                f"batch step {step} outside the precomputed schedule of {len(self.schedule)} batches"
            )
        name, indices = self.schedule[step]
        batch: dict[str, Tensor | str] = dict(self.collate([self.features[name][i] for i in indices]))
        batch["task"] = name
        return batch


def length_grouped(stream: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(steps, B) example indices regrouped inside each megabatch: sorted by length, batch order shuffled."""
    out = stream.copy()
    for lo in range(0, len(stream), MEGABATCH):
        block = stream[lo : lo + MEGABATCH]
        flat = block.reshape(-1)
        ordered = flat[np.argsort(-lengths[flat], kind="stable")].reshape(block.shape)
        out[lo : lo + len(block)] = ordered[rng.permutation(len(block))]
    return out


def padding_waste(source: MultiTaskBatchSource) -> float:
    """Share of the schedule's padded (B x longest) positions that are padding, over all steps."""
    real = padded = 0
    for name, indices in source.schedule:
        lengths = [len(source.features[name][i].input_ids) for i in indices]
        real, padded = real + sum(lengths), padded + max(lengths) * len(lengths)
    return 1.0 - real / padded if padded else 0.0


def single_task_steps(max_steps: int, rate: float) -> int:
    """Steps of one task's own run in single mode: its share of the mixture's budget (at least 1)."""
    return max(1, round(max_steps * rate))
