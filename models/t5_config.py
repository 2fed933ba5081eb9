"""T5 (v1.1) encoder-decoder shape, plus its named size presets.

A frozen dataclass like ``EncoderConfig`` (models stay framework-free), written into every
T5 checkpoint's ``config.json`` so the checkpoint rebuilds its own model. T5 decouples the
per-head width ``d_kv`` from ``d_model / num_heads``, and sizes its gated FFN by ``d_ff``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from models.config import ConfigError, from_known_fields, from_named_size


def _shape(encoder: int, decoder: int, d_model: int, heads: int, d_kv: int, d_ff: int) -> dict[str, int]:
    return {
        "num_layers": encoder, "num_decoder_layers": decoder, "d_model": d_model, "num_heads": heads,
        "d_kv": d_kv, "d_ff": d_ff,
    }  # fmt: skip


# (encoder blocks, decoder blocks, d_model, heads, d_kv, d_ff). "small" and "base" are T5 v1.1's
# own shapes; "tiny" (tests, the synthetic demo) and "mini" (CPU runs) shrink them.
T5_SIZES: dict[str, dict[str, int]] = {
    "tiny": _shape(2, 2, 128, 2, 64, 256),
    "mini": _shape(4, 4, 256, 4, 64, 640),
    "small": _shape(8, 8, 512, 6, 64, 1024),
    "base": _shape(12, 12, 768, 12, 64, 2048),
}


@dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    num_layers: int  # encoder blocks
    num_decoder_layers: int
    num_heads: int
    d_kv: int  # width of one attention head (T5 does not tie it to d_model / num_heads)
    d_ff: int  # width of the gated-GELU feed-forward layer
    num_buckets: int = 32  # relative-position buckets (half per direction in the encoder)
    max_distance: int = 128  # distances beyond this share the last bucket
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0  # decoding starts from <pad>, as in T5
    tie_embeddings: bool = False  # T5 v1.0: the output layer is the embedding (v1.1: its own)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "num_layers",
            "num_decoder_layers",
            "num_heads",
            "d_kv",
            "d_ff",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"T5Config.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ConfigError(f"T5Config.num_buckets must be an even number >= 4, got {self.num_buckets}")
        if self.max_distance <= self.num_buckets // 2:
            raise ConfigError(
                f"T5Config.max_distance ({self.max_distance}) must exceed "
                f"num_buckets / 2 ({self.num_buckets // 2})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"T5Config.dropout must be in [0, 1), got {self.dropout}")
        for name in ("pad_id", "eos_id", "decoder_start_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(
                    f"T5Config.{name} {getattr(self, name)} is outside the vocabulary "
                    f"(0..{self.vocab_size - 1})"
                )

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_size(cls, size: str, *, vocab_size: int, **overrides: Any) -> T5Config:
        """Config for a named preset in T5_SIZES; ``overrides`` replace fields (None values are ignored)."""
        return from_named_size(cls, T5_SIZES, "T5 size", size, vocab_size, overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> T5Config:
        """Inverse of to_dict; unknown keys are an error so a mistyped config.json is caught."""
        return from_known_fields(cls, data)
