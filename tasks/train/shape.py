"""EncoderShape: the encoder's architecture as a pre-training setting, turned into models' EncoderConfig.

A named size from ``models.config.SIZES`` plus optional overrides. The vocabulary, the
position table and the special ids are not settings: they come from the packed data.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from models.config import SIZES, EncoderConfig

SizeName = Literal["tiny", "mini", "small", "medium", "base", "large"]
assert set(get_args(SizeName)) == set(SIZES), "SizeName must list exactly the presets in models.config.SIZES"
MIN_MAX_POSITION = 512  # room for fine-tuning inputs longer than the pre-training rows (e.g. SQuAD)


class EncoderShape(BaseModel):
    """Layers, widths, normalisation and attention layout of the encoder (flat: a form section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: SizeName = Field("tiny", description="Named shape (layers/hidden/heads/FFN), see models.config.")
    hidden_size: int | None = Field(None, ge=8, le=8192, description="Override the size's hidden width.")
    num_layers: int | None = Field(None, ge=1, le=96, description="Override the size's number of layers.")
    num_heads: int | None = Field(None, ge=1, le=128, description="Override the size's attention heads.")
    intermediate_size: int | None = Field(None, ge=8, le=32768, description="Override the size's FFN width.")
    norm: Literal["post", "pre"] = Field("post", description="LayerNorm placement: post (BERT) or pre.")
    positions: Literal["learned", "sinusoidal", "rotary"] = Field(
        "learned", description="Position encoding: learned absolute (BERT), fixed sinusoidal or rotary."
    )
    ffn: Literal["gelu", "geglu"] = Field("gelu", description="Feed-forward: GELU MLP or gated GEGLU.")
    bias: bool = Field(True, description="Biases in the encoder's linear and LayerNorm layers.")
    doc_attention: bool = Field(
        False, description="Packed documents attend only within themselves (block-diagonal mask)."
    )
    dropout: float = Field(0.1, ge=0.0, le=0.9, description="Dropout on embeddings, attention and FFN.")

    def encoder_config(self, *, vocab_size: int, seq_len: int, pad_id: int, sep_id: int) -> EncoderConfig:
        """The model's config: this shape on the packed data's vocabulary and special ids."""
        overrides = self.model_dump(exclude={"size"})
        return EncoderConfig.from_size(
            self.size,
            vocab_size=vocab_size,
            max_position=max(MIN_MAX_POSITION, seq_len),
            pad_id=pad_id,
            sep_id=sep_id,
            attention_dropout=self.dropout,
            **overrides,
        )
