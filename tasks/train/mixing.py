"""T5-style task mixing: how often each task's batch is drawn, as a deterministic schedule.

Every fine-tuning step trains ONE task's batch. Which task is drawn from a mixing
distribution over tasks (examples-proportional with a cap K by default, T5 §3.5.2): rate ∝
min(n, K), so large tasks do not drown small ones; "temperature" flattens it further (rate ∝
min(n, K)^(1/T)) and "equal" ignores sizes. The whole schedule of (task, example indices)
is drawn up front from the seed, each task walking its own seeded epoch permutations, so
``batch(step)`` is a pure function of (seed, step) and the shared `fit()` resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from torch import Tensor

from tasks.downstream.features import Features, collate
from tasks.train.finetune_config import Mixing


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
    ) -> None:
        self.features = {t: list(f) for t, f in features.items()}
        self.tasks = list(self.features)
        empty = [t for t in self.tasks if not self.features[t]]
        if empty:
            raise ValueError(f"no training features for task(s) {empty}")
        picks = np.random.default_rng([seed, 0]).choice(
            len(self.tasks), size=num_batches, p=[rates[t] for t in self.tasks]
        )  # (num_batches,) task index per step
        self.schedule: list[tuple[str, np.ndarray]] = self._assign_indices(picks, batch_size, seed)

    def _assign_indices(self, picks: np.ndarray, batch_size: int, seed: int) -> list[tuple[str, np.ndarray]]:
        """Cut each task's stream of epoch permutations into its batches, in step order."""
        streams: dict[int, np.ndarray] = {}
        for k, name in enumerate(self.tasks):
            needed = int((picks == k).sum()) * batch_size
            n = len(self.features[name])
            rng = np.random.default_rng([seed, 1 + k])
            epochs = [rng.permutation(n) for _ in range(max(1, math.ceil(needed / n)))]
            streams[k] = np.concatenate(epochs)[:needed].reshape(-1, batch_size)  # (steps of task k, B)
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
        batch: dict[str, Tensor | str] = dict(collate([self.features[name][i] for i in indices]))
        batch["task"] = name
        return batch


def single_task_steps(max_steps: int, rate: float) -> int:
    """Steps of one task's own run in single mode: its share of the mixture's budget (at least 1)."""
    return max(1, round(max_steps * rate))
