"""Our T5 weights under ``transformers.T5ForConditionalGeneration``'s names, and its config.

The two models compute the same function (T5 v1.1: RMSNorm pre-norm, bucketed relative
position bias in the first block of each stack, no score scaling, gated-GELU with the tanh
GELU, untied output layer), so export is a renaming and nothing is approximated. The
embedding is stored once, as ``shared.weight``: transformers ties the encoder's and the
decoder's input embeddings to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import Tensor

from models.t5_config import T5Config

ATTENTION = {m: m for m in ("q", "k", "v", "o")}
FFN = {"gate": "wi_0", "up": "wi_1", "down": "wo"}
NORM = {"": ""}
# per block: (our sub-module, transformers' sub-module, the weights inside it)
ENCODER_BLOCK = (
    ("attention_norm", "0.layer_norm", NORM), ("attention", "0.SelfAttention", ATTENTION),
    ("ffn_norm", "1.layer_norm", NORM), ("ffn", "1.DenseReluDense", FFN),
)  # fmt: skip
DECODER_BLOCK = (
    ("self_norm", "0.layer_norm", NORM), ("self_attention", "0.SelfAttention", ATTENTION),
    ("cross_norm", "1.layer_norm", NORM), ("cross_attention", "1.EncDecAttention", ATTENTION),
    ("ffn_norm", "2.layer_norm", NORM), ("ffn", "2.DenseReluDense", FFN),
)  # fmt: skip
BIAS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # the first block's, shared


def t5_names(cfg: T5Config) -> Iterator[tuple[str, str]]:
    """(our parameter name, transformers' parameter name) for every weight of the model."""
    yield "embedding.weight", "shared.weight"
    if not cfg.tie_embeddings:  # tied (v1.0): transformers' lm_head is its shared embedding
        yield "lm_head.weight", "lm_head.weight"
    for stack, depth, block in (
        ("encoder", cfg.num_layers, ENCODER_BLOCK),
        ("decoder", cfg.num_decoder_layers, DECODER_BLOCK),
    ):
        yield f"{stack}_norm.weight", f"{stack}.final_layer_norm.weight"
        yield f"{stack}_bias.embedding.weight", f"{stack}.{BIAS}"
        for i in range(depth):
            for ours, theirs, weights in block:
                for a, b in weights.items():
                    yield (
                        ".".join(filter(None, (f"{stack}_blocks.{i}", ours, a, "weight"))),
                        ".".join(filter(None, (f"{stack}.block.{i}.layer", theirs, b, "weight"))),
                    )


def t5_weights(state: Mapping[str, Tensor], cfg: T5Config) -> dict[str, Tensor]:
    """Our state dict renamed; a missing or an unmapped weight is an error (nothing is dropped silently)."""
    names = dict(t5_names(cfg))
    unmapped = sorted(set(state) - set(names))
    missing = sorted(set(names) - set(state))
    if unmapped or missing:
        raise ValueError(
            f"T5 export: weights with no transformers name {unmapped}, missing weights {missing}"
        )
    return {theirs: state[ours].contiguous() for ours, theirs in names.items()}


def hf_t5_config(cfg: T5Config) -> dict[str, object]:
    """config.json for ``T5ForConditionalGeneration`` with our shape."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.num_buckets,
        "relative_attention_max_distance": cfg.max_distance,
        "dropout_rate": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": cfg.tie_embeddings,  # True: decoder outputs scaled by d_model^-0.5
        "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id,
        "decoder_start_token_id": cfg.decoder_start_id,
    }
