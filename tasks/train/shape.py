"""EncoderShape / T5Shape: a model's architecture as a pre-training setting, turned into models' config.

A named size (``models.config.SIZES``, ``models.t5_config.T5_SIZES``) plus optional overrides.
The vocabulary, the position table and the special ids are not settings: they come from the
packed data.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from models.config import SIZES, EncoderConfig
from models.t5_config import T5_SIZES, T5Config

SizeName = Literal["tiny", "mini", "small", "medium", "base", "large"]
assert set(get_args(SizeName)) == set(SIZES), "SizeName must list exactly the presets in models.config.SIZES"
T5SizeName = Literal["tiny", "mini", "small", "base"]
assert set(get_args(T5SizeName)) == set(T5_SIZES), "T5SizeName must list exactly models.t5_config.T5_SIZES"
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


class T5Shape(BaseModel):
    """Blocks and widths of a T5 v1.1 encoder-decoder (flat: a form section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: T5SizeName = Field(
        "tiny", description="Named shape (blocks/d_model/heads/d_ff), see models.t5_config."
    )
    d_model: int | None = Field(None, ge=8, le=8192, description="Override the size's model width.")
    num_layers: int | None = Field(None, ge=1, le=96, description="Override the size's encoder blocks.")
    num_decoder_layers: int | None = Field(None, ge=1, le=96, description="Override the decoder blocks.")
    num_heads: int | None = Field(None, ge=1, le=128, description="Override the size's attention heads.")
    d_kv: int | None = Field(None, ge=4, le=1024, description="Override the width of one attention head.")
    d_ff: int | None = Field(None, ge=8, le=32768, description="Override the gated FFN's width.")
    dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout (T5 v1.1 pre-trains without).")
    tie_embeddings: bool = Field(
        False, description="T5 v1.0's output layer: the embedding itself, on outputs scaled by d_model^-0.5."
    )

    def t5_config(self, *, vocab_size: int, pad_id: int, eos_id: int) -> T5Config:
        """The model's config: this shape on the packed data's vocabulary; decoding starts from <pad>."""
        overrides = self.model_dump(exclude={"size"})
        return T5Config.from_size(
            self.size,
            vocab_size=vocab_size,
            pad_id=pad_id,
            eos_id=eos_id,
            decoder_start_id=pad_id,
            **overrides,
        )
