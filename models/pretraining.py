"""Encoder + tied MLM head: the pre-training model."""

from __future__ import annotations

from torch import Tensor, nn

from models.config import EncoderConfig
from models.encoder import BertEncoder
from models.heads import MLMHead


class BertForMaskedLM(nn.Module):
    """Predicts the original token at masked positions only.

    ``masked_positions`` are flat indices into the (B*T) token grid; gathering those hidden
    states before the head means the H x V decoder runs on ~15% of tokens instead of all.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = BertEncoder(cfg)
        self.mlm_head = MLMHead(cfg)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        masked_positions: Tensor | None = None,
    ) -> Tensor:
        hidden = self.encoder(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        flat = hidden.reshape(-1, hidden.size(-1))  # (B*T, H)
        if masked_positions is not None:
            flat = flat.index_select(0, masked_positions)  # (N, H)
        return self.mlm_head(flat, self.encoder.embeddings.word.weight)  # (N, V)
