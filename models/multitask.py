"""One shared encoder with a named head per task (multi-task fine-tuning)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from torch import Tensor, nn

from models.config import EncoderConfig
from models.encoder import BertEncoder
from models.heads import ClassificationHead, HeadSpec, RegressionHead, SpanHead, TokenClassificationHead


def build_head(cfg: EncoderConfig, spec: HeadSpec) -> nn.Module:
    """The nn.Module for a head spec."""
    if spec.kind == "classification":
        assert spec.num_labels is not None  # HeadSpec guarantees it; narrows the type
        return ClassificationHead(cfg, spec.num_labels, spec.pooling)
    if spec.kind == "regression":
        return RegressionHead(cfg, spec.pooling)
    if spec.kind == "token":
        assert spec.num_labels is not None
        return TokenClassificationHead(cfg, spec.num_labels)
    return SpanHead(cfg)


class MultiTaskModel(nn.Module):
    """Shared BertEncoder + ``heads[task]``; ``forward(task, ...)`` routes one batch to one head.

    Outputs: classification (B, C) logits, regression (B,) scores, span a (start, end) pair of
    (B, T) logits with padding positions at a large negative value, token (B, T, C) tag logits.
    """

    def __init__(self, cfg: EncoderConfig, heads: Mapping[str, HeadSpec]) -> None:
        super().__init__()
        # one example per row here: a [SEP] between a sentence pair must not cut attention
        self.cfg = replace(cfg, doc_attention=False)
        self.head_specs: dict[str, HeadSpec] = dict(heads)
        self.encoder = BertEncoder(self.cfg)
        self.heads = nn.ModuleDict({name: build_head(cfg, spec) for name, spec in self.head_specs.items()})

    def forward(
        self,
        task: str,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if task not in self.heads:
            raise KeyError(f"MultiTaskModel has no head {task!r}; heads: {sorted(self.heads)}")
        hidden = self.encoder(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        return self.heads[task](hidden, attention_mask)

    def load_encoder_state(self, state: Mapping[str, Tensor]) -> None:
        """Start from pre-trained encoder weights (keys with or without an ``encoder.`` prefix).

        Only encoder keys are read, so a whole BertForMaskedLM state dict works too; the load is
        strict over the encoder, so a shape or name mismatch fails loudly instead of silently
        leaving layers at random init.
        """
        prefixed = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        self.encoder.load_state_dict(prefixed if prefixed else dict(state), strict=True)
