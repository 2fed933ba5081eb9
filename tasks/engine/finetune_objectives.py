"""Fine-tuning losses per head kind, and the multi-task objective `fit()` calls.

A multi-task batch holds ONE task (its name under ``batch["task"]``), so the objective
routes the whole batch to that task's head and loss; tasks never share a forward pass
and padding widths stay per task. Losses are the standard BERT fine-tuning ones:
cross-entropy over classes, mean squared error for a regression score, the mean of
the start and end cross-entropies for extractive spans, and per-word cross-entropy for tagging.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.heads import HeadKind

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of (B, C) logits against (B,) class indices; computed in fp32."""
    return F.cross_entropy(logits.float(), labels)


def regression_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error of (B,) scores against (B,) float targets; computed in fp32."""
    return F.mse_loss(scores.float(), targets.float())


def span_loss(
    start_logits: Tensor, end_logits: Tensor, start_positions: Tensor, end_positions: Tensor
) -> Tensor:
    """Mean of start and end cross-entropies over (B, T) logits; position 0 ([CLS]) = answer not in window."""
    start = F.cross_entropy(start_logits.float(), start_positions)
    end = F.cross_entropy(end_logits.float(), end_positions)
    return (start + end) / 2


def token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of (B, T, C) tag logits at the labelled positions of (B, T) labels (-100: none).

    Summed and divided by the count (at least 1) rather than ``reduction="mean"``: a batch with no
    labelled position (sentences of untokenizable words) then gives 0, not NaN, without a host sync.
    """
    targets = labels.flatten()
    total = F.cross_entropy(logits.float().flatten(0, 1), targets, ignore_index=-100, reduction="sum")
    return total / (targets != -100).sum().clamp_min(1)


def head_loss(kind: HeadKind, output: Tensor | tuple[Tensor, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
    """The loss of one head kind on its model output and the batch's labels."""
    if kind == "classification":
        return classification_loss(output, batch["labels"])
    if kind == "regression":
        return regression_loss(output, batch["labels"])
    if kind == "span":
        start, end = output
        return span_loss(start, end, batch["start_positions"], batch["end_positions"])
    if kind == "token":
        return token_loss(output, batch["labels"])
    raise ValueError(f"unknown head kind {kind!r}")


class MultiTaskObjective:
    """`objective(model, batch) -> (loss, metrics)` for a MultiTaskModel, dispatching on ``batch["task"]``.

    The metrics dict holds only ``loss``: the loop averages every metric over all steps
    of a log window, which would understate a per-task loss present in only some of
    them. Instead the objective keeps the last `window` losses of every task, and
    `recent_losses` gives a smoothed train loss per task (finetune logs it periodically).
    """

    def __init__(self, kinds: Mapping[str, HeadKind], window: int = 20) -> None:
        self.kinds = dict(kinds)
        self._recent: dict[str, deque[Tensor]] = {task: deque(maxlen=window) for task in self.kinds}

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor | str]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        task = batch["task"]
        if task not in self.kinds:
            raise KeyError(f"batch for task {task!r}, but the objective knows {sorted(self.kinds)}")
        loss = self.task_loss(model, task, batch)
        detached = loss.detach()
        self._recent[task].append(detached)
        return loss, {"loss": detached}

    def task_loss(self, model: nn.Module, task: str, batch: Mapping[str, Tensor | str]) -> Tensor:
        output = model(task, **{k: batch[k] for k in MODEL_INPUTS if k in batch})
        return head_loss(self.kinds[task], output, batch)  # type: ignore[arg-type]

    def recent_losses(self) -> dict[str, float]:
        """Mean of each task's last `window` training losses (tasks never seen are left out)."""
        return {
            task: float(torch.stack(list(losses)).float().mean())
            for task, losses in self._recent.items()
            if losses
        }


class TextToTextObjective(MultiTaskObjective):
    """The same task routing and per-task losses for a T5 model: every task is the decoder's token
    cross-entropy over its target text (classes, scores and answers alike)."""

    def __init__(self, tasks: Sequence[str], window: int = 20) -> None:
        super().__init__(dict.fromkeys(tasks, "text"), window)  # type: ignore[arg-type]

    def task_loss(self, model: nn.Module, task: str, batch: Mapping[str, Tensor | str]) -> Tensor:
        _, loss = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return loss
