"""Encoder shape and regularisation settings, plus the named size presets.

The config is a frozen dataclass (not pydantic: models stay framework-free) and it is
written into every checkpoint's ``config.json``, so a checkpoint rebuilds its own model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar

# Named shapes, smallest first: (layers, hidden, heads, FFN width). "tiny" is what tests and
# smoke runs use; "mini"/"small"/"medium" follow the compact-BERT family; "base"/"large" are BERT's.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "hidden_size": 128, "num_heads": 2, "intermediate_size": 512},
    "mini": {"num_layers": 4, "hidden_size": 256, "num_heads": 4, "intermediate_size": 1024},
    "small": {"num_layers": 4, "hidden_size": 512, "num_heads": 8, "intermediate_size": 2048},
    "medium": {"num_layers": 8, "hidden_size": 512, "num_heads": 8, "intermediate_size": 2048},
    "base": {"num_layers": 12, "hidden_size": 768, "num_heads": 12, "intermediate_size": 3072},
    "large": {"num_layers": 24, "hidden_size": 1024, "num_heads": 16, "intermediate_size": 4096},
}


T = TypeVar("T")


class ConfigError(ValueError):
    """An encoder config that cannot describe a working model."""


def from_named_size(
    cls: type[T], sizes: dict[str, dict[str, int]], label: str, size: str, vocab_size: int,
    overrides: dict[str, Any],
) -> T:  # fmt: skip
    """``cls`` built from the named shape ``sizes[size]``; ``overrides`` replace fields (None ones are
    ignored). Shared by the encoder's and T5's configs, so both refuse an unknown size alike."""
    if size not in sizes:
        raise ConfigError(f"unknown {label} {size!r}; choose one of {sorted(sizes)}")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return cls(vocab_size=vocab_size, **{**sizes[size], **chosen})


def from_known_fields(cls: type[T], data: dict[str, Any]) -> T:
    """Inverse of ``asdict``; unknown keys are an error so a mistyped config.json is caught."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
    return cls(**data)


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    norm: Literal["post", "pre"] = "post"  # post-LN = original BERT; pre-LN trains more stably when deep
    pad_id: int = 0
    positions: Literal["learned", "sinusoidal", "rotary"] = "learned"  # BERT learns absolute positions
    ffn: Literal["gelu", "geglu"] = "gelu"  # geglu: GELU(xW) * (xV), intermediate_size is its width
    bias: bool = True  # biases on the encoder's linear and LayerNorm layers
    doc_attention: bool = False  # packed rows: tokens attend only inside their own [SEP]-ended document
    sep_id: int = 3  # the [SEP] id that ends a document (doc_attention derives documents from it)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"EncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads != 0:
            raise ConfigError(
                f"EncoderConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        for name, allowed in (
            ("norm", ("post", "pre")),
            ("positions", ("learned", "sinusoidal", "rotary")),
            ("ffn", ("gelu", "geglu")),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"EncoderConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.positions == "rotary" and (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                f"EncoderConfig: rotary positions need an even head size, got "
                f"{self.hidden_size} / {self.num_heads} = {self.hidden_size // self.num_heads}"
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"EncoderConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("pad_id", "sep_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(
                    f"EncoderConfig.{name} {getattr(self, name)} is outside the vocabulary "
                    f"(0..{self.vocab_size - 1})"
                )

    @classmethod
    def from_size(cls, size: str, *, vocab_size: int, **overrides: Any) -> EncoderConfig:
        """Config for a named preset in SIZES; ``overrides`` replace any field (None values are ignored)."""
        return from_named_size(cls, SIZES, "model size", size, vocab_size, overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Inverse of to_dict; unknown keys are an error so a mistyped config.json is caught."""
        return from_known_fields(cls, data)
