"""The masked-language-modelling objective (fine-tuning objectives live in finetune_objectives.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.engine.masking import IGNORE_INDEX


def mlm_logits_and_targets(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Run a BertForMaskedLM on the masked positions only: (logits (N, V), targets (N,))."""
    flat_labels = batch["labels"].reshape(-1)  # (B*T,)
    masked_positions = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)  # (N,) flat indices into B*T
    logits = model(
        batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"), masked_positions
    )  # (N, V)
    return logits, flat_labels.index_select(0, masked_positions)


class MLMObjective:
    """Cross-entropy over masked positions, plus the fraction predicted exactly (mlm_accuracy).

    A batch that happens to have no masked token gives loss 0 (still attached to the graph),
    not the NaN a mean over nothing would.
    """

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        logits, targets = mlm_logits_and_targets(model, batch)
        n = max(targets.numel(), 1)
        loss = F.cross_entropy(logits.float(), targets, reduction="sum") / n
        accuracy = (logits.argmax(dim=-1) == targets).sum().float() / n
        return loss, {"mlm_accuracy": accuracy.detach()}


@torch.no_grad()
def evaluate_mlm(
    model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device
) -> dict[str, float]:
    """Token-weighted MLM loss, accuracy and perplexity over ``batches`` (an iterable of batches).

    Weighting by masked-token count (not averaging per-batch means) makes the figure independent
    of how the validation rows happen to be split into batches.
    """
    total_loss, correct, count = 0.0, 0, 0
    for batch in batches:
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        logits, targets = mlm_logits_and_targets(model, moved)
        total_loss += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == targets).sum())
        count += targets.numel()
    if count == 0:
        raise ValueError("evaluate_mlm: the evaluation batches contain no masked token")
    loss = total_loss / count
    return {
        "val_loss": loss,
        "val_mlm_accuracy": correct / count,
        "val_perplexity": math.exp(min(loss, 50.0)),
    }
