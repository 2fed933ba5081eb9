"""Pre-training objectives: MLM, MLM + sentence-pair (NSP / SOP), ELECTRA replaced-token detection,
and T5's span corruption (an encoder-decoder writing the dropped spans).

(Fine-tuning objectives live in finetune_objectives.py.) Each objective is a callable
``(model, batch) -> (loss, metrics)`` for ``fit`` plus ``evaluate(model, batches, device)`` for
validation. Which tokens are masked (token / whole-word / span) is the batch source's business,
so MLM, WWM and span masking all use MLMObjective.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.engine.masking import IGNORE_INDEX


def masked_positions_and_targets(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """(flat indices into B*T of the masked tokens (N,), their original ids (N,))."""
    flat_labels = batch["labels"].reshape(-1)  # (B*T,)
    positions = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)  # (N,)
    return positions, flat_labels.index_select(0, positions)


def mlm_logits_and_targets(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Run a BertForMaskedLM on the masked positions only: (logits (N, V), targets (N,))."""
    positions, targets = masked_positions_and_targets(batch)
    logits = model(
        batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"), positions,
        batch.get("doc_ids"),
    )  # fmt: skip
    return logits, targets


def mlm_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy, accuracy) over masked tokens; 0 (still in the graph) when there are none.

    A batch that happens to have no masked token gives loss 0, not the NaN a mean over nothing would.
    """
    n = max(targets.numel(), 1)
    logits = logits.float()  # fp32 loss; argmax in fp32 too (bf16 argmax on CPU took 33 ms a step)
    loss = F.cross_entropy(logits, targets, reduction="sum") / n
    accuracy = (logits.argmax(dim=-1) == targets).sum().float() / n
    return loss, accuracy.detach()


class MLMObjective:
    """Cross-entropy over masked positions, plus the fraction predicted exactly (mlm_accuracy)."""

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, accuracy = mlm_loss(*mlm_logits_and_targets(model, batch))
        return loss, {"mlm_accuracy": accuracy}

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device) -> dict:
        return evaluate_mlm(model, batches, device)


class PairObjective:
    """MLM + sentence-pair classification on [CLS] (``name`` "nsp" or "sop" names the metrics).

    Loss = MLM loss + pair cross-entropy (equal weights, as in BERT and ALBERT).
    """

    def __init__(self, name: str = "sop") -> None:
        self.name = name

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        (mlm, mlm_accuracy), (pair, pair_accuracy) = self.losses(model, batch)
        metrics = {"mlm_loss": mlm.detach(), "mlm_accuracy": mlm_accuracy}
        metrics |= {f"{self.name}_loss": pair.detach(), f"{self.name}_accuracy": pair_accuracy}
        return mlm + pair, metrics

    def losses(self, model: nn.Module, batch: dict[str, Any]) -> tuple[tuple[Tensor, Tensor], ...]:
        positions, targets = masked_positions_and_targets(batch)
        logits, pair_logits = model(
            batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"), positions,
            return_pair=True,
        )  # fmt: skip
        pair_labels = batch["pair_labels"]  # (B,)
        pair = F.cross_entropy(pair_logits.float(), pair_labels)
        pair_accuracy = (pair_logits.argmax(dim=-1) == pair_labels).float().mean()
        return mlm_loss(logits, targets), (pair, pair_accuracy.detach())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device) -> dict:
        """MLM figures (token-weighted, as evaluate_mlm) + pair accuracy over all validation pairs."""
        kept = [to(batch, device) for batch in batches]
        result = evaluate_mlm(model, kept, device)
        correct = total = 0
        for batch in kept:
            _, (_, accuracy) = self.losses(model, batch)
            correct += float(accuracy) * len(batch["pair_labels"])
            total += len(batch["pair_labels"])
        return result | {f"val_{self.name}_accuracy": correct / max(total, 1)}


class ElectraObjective:
    """Generator MLM loss + ``weight`` x discriminator BCE over real (non-pad) tokens (ELECTRA: 50).

    The discriminator's loss per token is far smaller than the generator's per masked token,
    hence the large weight. Metrics: generator MLM accuracy, discriminator loss and accuracy,
    and the fraction of tokens replaced (falls as the generator gets better at fooling it).
    """

    def __init__(self, weight: float = 50.0) -> None:
        self.weight = weight

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        (gen, gen_accuracy), (disc, disc_accuracy, replaced) = self.losses(model, batch)
        metrics = {"mlm_loss": gen.detach(), "mlm_accuracy": gen_accuracy, "disc_loss": disc.detach()}
        metrics |= {"disc_accuracy": disc_accuracy, "replaced_fraction": replaced}
        return gen + self.weight * disc, metrics

    def losses(self, model: nn.Module, batch: dict[str, Any]) -> tuple[tuple[Tensor, ...], ...]:
        positions, targets = masked_positions_and_targets(batch)
        gen_logits, disc_logits, replaced = model(
            batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"), positions, targets,
            batch.get("doc_ids"),
        )  # fmt: skip
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(replaced)
        logits, labels = disc_logits.float()[real], replaced[real].float()  # (n_real,)
        disc = F.binary_cross_entropy_with_logits(logits, labels)
        disc_accuracy = ((logits > 0).float() == labels).float().mean().detach()
        return mlm_loss(gen_logits, targets), (disc, disc_accuracy, labels.mean().detach())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device) -> dict:
        """Generator MLM figures + discriminator accuracy, token-weighted over the validation batches."""
        kept = [to(batch, device) for batch in batches]
        result = evaluate_mlm(model.generator, kept, device)
        correct = total = 0.0
        for batch in kept:
            _, (_, accuracy, _) = self.losses(model, batch)
            n = float(batch["attention_mask"].sum())
            correct, total = correct + float(accuracy) * n, total + n
        return result | {"val_disc_accuracy": correct / max(total, 1.0)}


class SpanCorruptionObjective:
    """Token cross-entropy of the decoder over the targets (sentinels, span tokens, </s>), as T5.

    Metric: the fraction of target tokens predicted exactly under teacher forcing.
    """

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        logits, loss = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        real = batch["labels"] != IGNORE_INDEX
        accuracy = (logits.argmax(dim=-1)[real] == batch["labels"][real]).float().mean()
        return loss, {"token_accuracy": accuracy.detach()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device) -> dict:
        """Target-token-weighted loss, accuracy and perplexity over the validation batches."""
        loss, accuracy = token_weighted(span_logits_and_targets(model, to(b, device)) for b in batches)
        return {"val_loss": loss, "val_token_accuracy": accuracy, "val_perplexity": math.exp(min(loss, 50.0))}


def span_logits_and_targets(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """A T5 model's logits at the real target positions (N, V) and those targets (N,)."""
    logits, _ = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
    real = batch["labels"] != IGNORE_INDEX
    return logits[real], batch["labels"][real]


def token_weighted(pairs: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """(cross-entropy, accuracy) over every predicted token of (logits (N, V), targets (N,)) pairs.

    Weighting by token count (not averaging per-batch means) makes the figure independent of
    how the validation rows happen to be split into batches.
    """
    total_loss, correct, count = 0.0, 0, 0
    for logits, targets in pairs:
        total_loss += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == targets).sum())
        count += targets.numel()
    if count == 0:
        raise ValueError("the evaluation batches contain no token to predict")
    return total_loss / count, correct / count


def to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_mlm(
    model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device
) -> dict[str, float]:
    """Token-weighted MLM loss, accuracy and perplexity over the masked tokens of ``batches``."""
    loss, accuracy = token_weighted(mlm_logits_and_targets(model, to(b, device)) for b in batches)
    return {"val_loss": loss, "val_mlm_accuracy": accuracy, "val_perplexity": math.exp(min(loss, 50.0))}
