"""Task heads that sit on top of the encoder's hidden states (B, T, H).

Sentence-level heads (classification, regression) pool the sequence through their own BERT
pooler (dense + tanh): each task gets its own pooler because pre-training here has no
next-sentence objective to train a shared one. The pooler reads [CLS] (BERT) or the mean of the
non-padding positions: MLM never trains [CLS] to summarise the input, so the mean is the
natural alternative after a short pre-training budget (in BENCHMARKS.md's 50-minute CPU run it
moved only SST-2, by 1-2 points). The MLM head is tied to the word embeddings and only ever sees the
hidden states of masked positions, which is where most of the pre-training compute would
otherwise go (the H x V decoder on every token).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import EncoderConfig
from models.dropout import Dropout
from models.encoder import init_bert_weights

HeadKind = Literal["classification", "regression", "span", "token"]
Pooling = Literal["cls", "mean"]

# Span logits at padding positions: very negative so softmax gives them ~0 probability, but finite
# so bf16/fp16 arithmetic on them never produces NaN.
SPAN_PAD_LOGIT = -1e4


@dataclass(frozen=True)
class HeadSpec:
    """What a task head predicts. ``num_labels`` defaults to 1 for regression and 2 for span."""

    kind: HeadKind
    num_labels: int | None = None
    pooling: Pooling = "cls"  # sentence-level heads only; span and token heads read every position

    def __post_init__(self) -> None:
        fixed = {"regression": 1, "span": 2}
        if self.kind not in get_args(HeadKind):
            raise ValueError(
                f"HeadSpec.kind must be one of {'|'.join(get_args(HeadKind))}, got {self.kind!r}"
            )
        if self.pooling not in get_args(Pooling):
            raise ValueError(f"HeadSpec.pooling must be cls|mean, got {self.pooling!r}")
        if self.kind in fixed:
            if self.num_labels not in (None, fixed[self.kind]):
                raise ValueError(
                    f"HeadSpec: a {self.kind} head has num_labels={fixed[self.kind]}, got {self.num_labels}"
                )
            object.__setattr__(self, "num_labels", fixed[self.kind])
        elif self.num_labels is None or self.num_labels < 2:
            raise ValueError(f"HeadSpec: a {self.kind} head needs num_labels >= 2, got {self.num_labels}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        # checkpoints written before pooling existed pooled [CLS]
        return cls(kind=data["kind"], num_labels=data.get("num_labels"), pooling=data.get("pooling", "cls"))


class Pooler(nn.Module):
    """[CLS] (or masked-mean) hidden state -> dense -> tanh, as in BERT."""

    def __init__(self, cfg: EncoderConfig, pooling: Pooling = "cls") -> None:
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return torch.tanh(self.dense(pool(hidden, attention_mask, self.pooling)))  # (B, H)


def pool(hidden: Tensor, attention_mask: Tensor | None, pooling: Pooling) -> Tensor:
    """(B, T, H) -> (B, H): the [CLS] state, or the mean over positions the mask marks real."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class ClassificationHead(nn.Module):
    """(B, T, H) -> class logits (B, C)."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, pooling: Pooling = "cls") -> None:
        super().__init__()
        self.pooler = Pooler(cfg, pooling)
        self.dropout = Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        self.apply(init_bert_weights)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.dropout(self.pooler(hidden, attention_mask)))  # (B, C)


class RegressionHead(nn.Module):
    """(B, T, H) -> one score per example (B,), e.g. STS-B similarity."""

    def __init__(self, cfg: EncoderConfig, pooling: Pooling = "cls") -> None:
        super().__init__()
        self.pooler = Pooler(cfg, pooling)
        self.dropout = Dropout(cfg.dropout)
        self.regressor = nn.Linear(cfg.hidden_size, 1)
        self.apply(init_bert_weights)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.regressor(self.dropout(self.pooler(hidden, attention_mask))).squeeze(-1)  # (B, 1) -> (B,)


class SpanHead(nn.Module):
    """(B, T, H) -> (start logits (B, T), end logits (B, T)) for extractive QA."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.qa = nn.Linear(cfg.hidden_size, 2)
        self.apply(init_bert_weights)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logits = self.qa(hidden)  # (B, T, 2)
        if attention_mask is not None:  # an answer can never start or end on padding
            logits = logits.masked_fill(~attention_mask.bool()[..., None], SPAN_PAD_LOGIT)
        start, end = logits.unbind(dim=-1)  # 2 x (B, T)
        return start, end


class TokenClassificationHead(nn.Module):
    """(B, T, H) -> per-position tag logits (B, T, C), e.g. NER; BERT's: dropout then one linear layer."""

    def __init__(self, cfg: EncoderConfig, num_labels: int) -> None:
        super().__init__()
        self.dropout = Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        self.apply(init_bert_weights)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.dropout(hidden))  # (B, T, C); padding is masked out by the loss


class MLMHead(nn.Module):
    """Masked-position hidden states (N, H) -> vocabulary logits (N, V).

    The decoder matrix is the word-embedding matrix (weight tying), passed in at call time so the
    state dict holds it once; the head owns only the transform and the output bias.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(init_bert_weights)

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        x = self.norm(F.gelu(self.dense(hidden)))  # (N, H)
        return F.linear(x, word_embeddings, self.bias)  # (N, H) @ (V, H)^T -> (N, V)
