"""T5 v1.1 encoder-decoder (Raffel et al., 2020; the v1.1 changes of the T5 repository).

What makes it T5 rather than BERT, each a choice of the paper:

- RMSNorm (scale only, no mean, no bias) at the input of every sub-layer, and once more at
  the end of each stack; no bias anywhere;
- no absolute positions: a learned scalar per (head, relative-distance bucket) is added to
  the attention scores, bidirectional buckets in the encoder, causal ones in the decoder,
  computed by the first block and shared by the others; none in cross-attention;
- no 1/sqrt(d) scaling of the scores: the initialisation folds it into the query weights;
- gated-GELU feed-forward (v1.1): GELU(x W0) * (x W1), then Wo;
- an output layer of its own (v1.1 does not tie it to the embedding); ``tie_embeddings``
  gives T5 v1.0's instead: the logits are the embedding applied to the decoder output scaled
  by d_model^-0.5, so predicting a word also trains how that word is read.

Attention runs through ``F.scaled_dot_product_attention`` with the position bias as its
additive mask, except on CPU in bf16 at short lengths or with attention dropout, where the
encoder's ``dense_attention`` is faster (``models.encoder.prefers_dense``); dropout masks come
from ``models.dropout`` as in the encoder. ``generate`` decodes greedily with a key/value cache: the decoder's
self-attention keys and values grow by one position a step, the cross-attention ones are
projected once from the encoder output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dropout import Dropout
from models.encoder import dense_attention, prefers_dense
from models.t5_config import T5Config

IGNORE = -100  # label id the loss skips (target padding)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the root mean square taken in fp32 (T5's LayerNorm has no mean or bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        scaled = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * scaled.type_as(x)


def relative_buckets(relative: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """Bucket id of each (key position - query position).

    Half the buckets hold exact distances 0 .. n/2 - 1, the other half log-spaced distances
    up to ``max_distance`` (farther ones share the last bucket). Bidirectional buckets spend
    half of them on keys after the query; causal ones only see keys at or before it.
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


class PositionBias(nn.Module):
    """Learned (bucket, head) scalars, as a (1, heads, queries, keys) additive attention bias."""

    def __init__(self, cfg: T5Config, *, bidirectional: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.num_buckets, cfg.num_heads)
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance

    def forward(self, num_queries: int, num_keys: int, first_query: int = 0) -> Tensor:
        device = self.embedding.weight.device
        queries = torch.arange(first_query, first_query + num_queries, device=device)[:, None]
        keys = torch.arange(num_keys, device=device)[None, :]
        buckets = relative_buckets(
            keys - queries, bidirectional=self.bidirectional, num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )  # fmt: skip
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, nh, Q, K)


KeyValues = tuple[Tensor, Tensor]  # (B, nh, T, d_kv) each


class Attention(nn.Module):
    """Multi-head attention without biases or score scaling (the bias/mask is added to the scores)."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.q = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.o = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.d_kv).transpose(1, 2)  # (B, nh, T, d_kv)

    def key_values(self, source: Tensor) -> KeyValues:
        return self.heads(self.k(source)), self.heads(self.v(source))

    def forward(self, x: Tensor, keys_values: KeyValues, bias: Tensor) -> Tensor:
        k, v = keys_values
        p = self.dropout if self.training else 0.0
        q = self.heads(self.q(x))
        if prefers_dense(q, p):
            y = dense_attention(q, k, v, bias, p, scale=1.0)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p, scale=1.0)
        B, _, T, _ = y.shape
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class GatedFeedForward(nn.Module):
    """GELU(x W0) * (x W1) -> dropout -> Wo (T5 v1.1's "gated-gelu", tanh-approximated GELU)."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(F.gelu(self.gate(x), approximate="tanh") * self.up(x)))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.attention_norm, self.attention = RMSNorm(cfg.d_model, cfg.layer_norm_eps), Attention(cfg)
        self.ffn_norm, self.ffn = RMSNorm(cfg.d_model, cfg.layer_norm_eps), GatedFeedForward(cfg)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        h = self.attention_norm(x)
        x = x + self.dropout(self.attention(h, self.attention.key_values(h), bias))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


@dataclass
class DecoderCache:
    """Per decoder block: self-attention keys/values so far, and the encoder's projected ones."""

    self_kv: list[KeyValues | None]
    cross_kv: list[KeyValues | None]
    length: int = 0  # decoder positions already in self_kv


class DecoderBlock(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.self_norm, self.self_attention = RMSNorm(cfg.d_model, cfg.layer_norm_eps), Attention(cfg)
        self.cross_norm, self.cross_attention = RMSNorm(cfg.d_model, cfg.layer_norm_eps), Attention(cfg)
        self.ffn_norm, self.ffn = RMSNorm(cfg.d_model, cfg.layer_norm_eps), GatedFeedForward(cfg)
        self.dropout = Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, self_bias: Tensor, encoded: Tensor, cross_bias: Tensor,
        cache: DecoderCache | None = None, index: int = 0,
    ) -> Tensor:  # fmt: skip
        h = self.self_norm(x)
        kv = self.self_attention.key_values(h)
        if cache is not None:
            past = cache.self_kv[index]
            if past is not None:
                kv = (torch.cat([past[0], kv[0]], dim=2), torch.cat([past[1], kv[1]], dim=2))
            cache.self_kv[index] = kv
        x = x + self.dropout(self.self_attention(h, kv, self_bias))
        h = self.cross_norm(x)
        cross = cache.cross_kv[index] if cache is not None else None
        if cross is None:
            cross = self.cross_attention.key_values(encoded)
            if cache is not None:
                cache.cross_kv[index] = cross
        x = x + self.dropout(self.cross_attention(h, cross, cross_bias))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


def padding_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) 1/0 key mask -> (B, 1, 1, T) additive bias: 0 for tokens, the dtype's minimum for padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class T5ForConditionalGeneration(nn.Module):
    """Encoder-decoder with a language-model head: ``forward`` scores targets, ``generate`` decodes."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)  # shared by encoder and decoder inputs
        self.encoder_bias = PositionBias(cfg, bidirectional=True)
        self.encoder_blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.num_layers))
        self.encoder_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.decoder_bias = PositionBias(cfg, bidirectional=False)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.num_decoder_layers))
        self.decoder_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.dropout = Dropout(cfg.dropout)
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        """Mesh-TensorFlow's initialisation: the missing 1/sqrt(d_kv) of the scores sits in the queries."""
        d, cfg = self.cfg.d_model, self.cfg
        if isinstance(module, Attention):
            nn.init.normal_(module.q.weight, std=(d * cfg.d_kv) ** -0.5)
            nn.init.normal_(module.k.weight, std=d**-0.5)
            nn.init.normal_(module.v.weight, std=d**-0.5)
            nn.init.normal_(module.o.weight, std=cfg.inner_dim**-0.5)
        elif isinstance(module, GatedFeedForward):
            nn.init.normal_(module.gate.weight, std=d**-0.5)
            nn.init.normal_(module.up.weight, std=d**-0.5)
            nn.init.normal_(module.down.weight, std=cfg.d_ff**-0.5)
        elif isinstance(module, PositionBias):
            nn.init.normal_(module.embedding.weight, std=d**-0.5)
        elif module is self:
            nn.init.normal_(self.embedding.weight, std=1.0)
            if self.lm_head is not None:
                nn.init.normal_(self.lm_head.weight, std=d**-0.5)

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, S) ids -> (B, S, d_model) encoder states."""
        x = self.dropout(self.embedding(input_ids))
        S = input_ids.size(1)
        bias = self.encoder_bias(S, S) + padding_bias(attention_mask, x.dtype)
        for block in self.encoder_blocks:
            x = block(x, bias)
        return self.dropout(self.encoder_norm(x))

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoded: Tensor,
        attention_mask: Tensor,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Decoder states -> (B, T, vocab) logits; with ``cache``, the ids continue the cached positions."""
        x = self.dropout(self.embedding(decoder_input_ids))
        T, first = decoder_input_ids.size(1), cache.length if cache is not None else 0
        # causal buckets (later keys get bucket 0), then the causal mask over them
        self_bias = self.decoder_bias(T, first + T, first_query=first)
        causal = torch.ones(T, first + T, dtype=torch.bool, device=x.device).tril(diagonal=first)
        self_bias = self_bias.masked_fill(~causal, torch.finfo(self_bias.dtype).min)
        cross_bias = padding_bias(attention_mask, x.dtype)
        for index, block in enumerate(self.decoder_blocks):
            x = block(x, self_bias, encoded, cross_bias, cache, index)
        if cache is not None:
            cache.length += T
        return self.logits(self.dropout(self.decoder_norm(x)))

    def logits(self, x: Tensor) -> Tensor:
        """Vocabulary logits of final decoder states: the output layer, or (tied, v1.0) the embedding."""
        if self.lm_head is None:
            return F.linear(x * self.cfg.d_model**-0.5, self.embedding.weight)
        return self.lm_head(x)

    def shift_right(self, labels: Tensor) -> Tensor:
        """Teacher forcing: decoder inputs are the targets one step late, starting from decoder_start_id."""
        start = torch.full_like(labels[:, :1], self.cfg.decoder_start_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == IGNORE, self.cfg.pad_id)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """(logits, mean token cross-entropy over labels != -100, or None without labels)."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5ForConditionalGeneration.forward needs labels or decoder_input_ids")
            decoder_input_ids = self.shift_right(labels)
        logits = self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        return logits, loss

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int) -> Tensor:
        """Greedy decoding with a key/value cache: (B, <= max_new_tokens) ids, each row ending at its
        first </s> and padded with pad_id after it; stops early once every row has ended."""
        encoded = self.encode(input_ids, attention_mask)
        B, n = input_ids.size(0), len(self.decoder_blocks)
        cache = DecoderCache(self_kv=[None] * n, cross_kv=[None] * n)
        step = torch.full((B, 1), self.cfg.decoder_start_id, dtype=torch.long, device=input_ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        out: list[Tensor] = []
        for _ in range(max_new_tokens):
            logits = self.decode(step, encoded, attention_mask, cache)[:, -1]
            token = logits.argmax(-1).masked_fill(done, self.cfg.pad_id)
            out.append(token)
            done |= token == self.cfg.eos_id
            if bool(done.all()):
                break
            step = token[:, None]
        return torch.stack(out, dim=1) if out else input_ids.new_zeros(B, 0)
