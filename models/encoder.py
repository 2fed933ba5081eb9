"""BERT-style Transformer encoder: embeddings -> N x (attention, feed-forward) blocks.

Follows the paper's structure (Devlin et al., 2019) with switches from later work, all off by
default so the default model is BERT: ``norm="pre"`` normalises the input of each sub-layer
(stable for deep or high-LR runs); ``positions`` picks learned, fixed sinusoidal or rotary
(RoFormer) positions; ``ffn="geglu"`` gates the FFN (Shazeer, 2020); ``bias=False`` drops
biases; ``doc_attention`` keeps the documents packed into one row from attending to each other.
Attention goes through ``F.scaled_dot_product_attention`` so PyTorch picks the fastest kernel
for the device, except on CPU for bf16 rows of at most 128 tokens or under attention dropout
(see ``prefers_dense``);
document masks use FlexAttention block masks on CUDA (they skip the blocks between documents
instead of computing and discarding them).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import EncoderConfig
from models.dropout import Dropout, dropout

try:  # FlexAttention (PyTorch >= 2.5); only used on CUDA
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older PyTorch: the dense-mask path still works
    BlockMask = None  # type: ignore[assignment,misc]

AttentionMask = Any  # None | bool Tensor (B, 1, 1|T, T) | FlexAttention BlockMask


class Embeddings(nn.Module):
    """word + absolute position (learned or sinusoidal; none for rotary) + token type -> LN, dropout."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_id)
        if cfg.positions == "learned":
            self.position = nn.Embedding(cfg.max_position, cfg.hidden_size)
        elif cfg.positions == "sinusoidal":  # fixed, so not saved: rebuilt from the config
            self.register_buffer(
                "sinusoid", sinusoid_table(cfg.max_position, cfg.hidden_size), persistent=False
            )
        self.kind = cfg.positions
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        T = input_ids.size(1)
        x = self.word(input_ids) + self.token_type(token_type_ids)  # (B, T, H)
        if self.kind == "learned":
            x = x + self.position(torch.arange(T, device=input_ids.device))  # (T, H) broadcast over B
        elif self.kind == "sinusoidal":
            x = x + self.sinusoid[:T]
        return self.dropout(self.norm(x))


def sinusoid_table(max_position: int, dim: int) -> Tensor:
    """(P, dim) fixed position encodings of "Attention Is All You Need": sin on even, cos on odd dims."""
    position = torch.arange(max_position, dtype=torch.float32)[:, None]  # (P, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (dim/2,)
    table = torch.zeros(max_position, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class Rotary(nn.Module):
    """cos/sin tables for rotary embeddings; rotating q and k makes q.k depend on the offset only."""

    def __init__(self, cfg: EncoderConfig, base: float = 10000.0) -> None:
        super().__init__()
        head_dim = cfg.hidden_size // cfg.num_heads
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
        angles = torch.outer(torch.arange(cfg.max_position, dtype=torch.float32), inv_freq)  # (P, hs/2)
        angles = torch.cat([angles, angles], dim=-1)  # (P, hs): each frequency rotates a pair (i, i+hs/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        return self.cos[:seq_len], self.sin[:seq_len]  # 2 x (T, hs)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, nh, T, hs) by position-dependent angles; (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention under a padding or document mask (masked keys get no weight)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)  # one matmul for q, k, v
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.attention_dropout = cfg.attention_dropout
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: AttentionMask, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=2)  # 3 x (B, T, H)
        # (B, T, H) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if BlockMask is not None and isinstance(mask, BlockMask):  # no dropout there: only used without it
            y = compiled_flex_attention()(q, k, v, block_mask=mask)
        else:
            p = self.attention_dropout if self.training else 0.0
            attend = dense_attention if prefers_dense(q, p) else F.scaled_dot_product_attention
            y = attend(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, H)  # re-assemble heads side by side
        return self.dropout(self.out(y))


DENSE_MAX_LEN = 128


def prefers_dense(q: Tensor, dropout_p: float) -> bool:
    """Whether plain matmul attention beats SDPA for these queries (B, nh, T, hs).

    PyTorch's CPU flash kernel is slow in bf16 on short rows: at (32, 4, 128, 64) forward +
    backward took 34 ms against 12 ms for ``dense_attention`` on a 2-core AVX512-BF16 EPYC
    (``benchmarks/pretrain_bench.py`` measures the whole step). In fp32, or at 192+ tokens,
    the flash kernel is as fast or faster and needs no (T, T) score matrix. With attention
    dropout SDPA falls back to the same matmuls on CPU but draws its mask with ``bernoulli_``;
    here it comes from ``models.dropout`` (a third of the cost).
    """
    if q.is_cuda:
        return False
    return dropout_p > 0.0 or (q.dtype == torch.bfloat16 and q.size(-2) <= DENSE_MAX_LEN)


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """softmax(q k^T * scale) v with SDPA's mask semantics: a boolean mask (True = may attend) or a
    float one added to the scores (T5's position bias); ``scale`` defaults to 1/sqrt(hs) like SDPA.

    The softmax runs in fp32 (a float mask is added in fp32 too). Masked scores get the dtype's
    minimum rather than -inf, so a query whose keys are all masked (a row of padding) gets
    finite, unused outputs.
    """
    scale = q.size(-1) ** -0.5 if scale is None else scale
    scores = (q * scale if scale != 1.0 else q) @ k.transpose(-1, -2)  # (B, nh, T, S)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    elif attn_mask is not None:
        scores = scores.float() + attn_mask.float()
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    if dropout_p:
        probs = dropout(probs, dropout_p)
    return probs @ v


@functools.cache
def compiled_flex_attention() -> Any:
    """flex_attention compiled once per process (uncompiled it materialises the full score matrix)."""
    return torch.compile(flex_attention, dynamic=False)


class FeedForward(nn.Module):
    """Position-wise H -> I -> H MLP with GELU, or its gated GEGLU variant (an extra H x I matrix)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.gated = cfg.ffn == "geglu"
        width = 2 * cfg.intermediate_size if self.gated else cfg.intermediate_size
        self.up = nn.Linear(cfg.hidden_size, width, bias=cfg.bias)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)  # (B, T, I) or (B, T, 2I)
        if self.gated:
            value, gate = h.chunk(2, dim=-1)
            h = value * F.gelu(gate)
        else:
            h = F.gelu(h)
        return self.dropout(self.down(h))


class Block(nn.Module):
    """One encoder layer; ``pre`` decides where the LayerNorms sit relative to the residuals."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.attention = SelfAttention(cfg)
        self.attention_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)

    def forward(self, x: Tensor, mask: AttentionMask, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.pre:  # x + f(LN(x)): the residual stream is never normalised
            x = x + self.attention(self.attention_norm(x), mask, rope)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attention_norm(x + self.attention(x, mask, rope))  # LN(x + f(x)): original BERT
        return self.ffn_norm(x + self.ffn(x))


class BertEncoder(nn.Module):
    """Token ids -> contextual hidden states (B, T, H)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.rotary = Rotary(cfg) if cfg.positions == "rotary" else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        # pre-LN leaves the residual stream un-normalised, so it needs one LayerNorm at the end
        self.final_norm = (
            nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
            if cfg.norm == "pre"
            else None
        )
        self.apply(init_bert_weights)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        doc_ids: Tensor | None = None,
    ) -> Tensor:
        """``doc_ids`` (B, T): document index per token (only read when cfg.doc_attention; derived
        from [SEP]s when None). Padding may carry any id: the attention mask keeps it out."""
        seq_len = input_ids.size(1)
        if seq_len > self.cfg.max_position:
            raise ValueError(f"sequence length {seq_len} exceeds max_position {self.cfg.max_position}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        mask = self.attention_mask(input_ids, attention_mask, doc_ids)
        rope = self.rotary(seq_len) if self.rotary is not None else None
        for layer in self.layers:
            x = layer(x, mask, rope)
        return self.final_norm(x) if self.final_norm is not None else x

    def attention_mask(
        self, input_ids: Tensor, attention_mask: Tensor | None, doc_ids: Tensor | None
    ) -> AttentionMask:
        """Key-padding mask, or with doc_attention a block-diagonal document mask (flex on CUDA)."""
        if not self.cfg.doc_attention:
            return key_padding_mask(attention_mask)
        docs = document_ids(input_ids, self.cfg.sep_id, attention_mask, doc_ids)  # (B, T), pad = -1
        use_flex = input_ids.is_cuda and BlockMask is not None
        if use_flex and (not self.training or self.cfg.attention_dropout == 0.0):
            return document_block_mask(docs)
        return document_mask(docs)


def key_padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """(B, T) 1=real/0=pad -> boolean (B, 1, 1, T) mask for SDPA (True = may attend).

    Returns None when there is no padding so SDPA can use its fastest mask-free kernels.
    """
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    if not torch.compiler.is_compiling() and bool(keep.all()):  # a host sync: would break a compiled graph
        return None
    return keep[:, None, None, :]  # broadcast over heads and query positions


def document_ids(
    input_ids: Tensor, sep_id: int, attention_mask: Tensor | None = None, doc_ids: Tensor | None = None
) -> Tensor:
    """(B, T) document index of each token; [SEP] belongs to the document it ends, padding gets -1.

    Padding forming its own "document" means every query row has at least one key it may attend
    to (itself), so SDPA never sees an all-masked row (which would give NaN).
    """
    if doc_ids is None:
        is_sep = (input_ids == sep_id).long()
        doc_ids = torch.cumsum(is_sep, dim=1) - is_sep  # the [SEP] closes its doc; the next token opens one
    if attention_mask is not None:
        doc_ids = doc_ids.masked_fill(~attention_mask.bool(), -1)
    return doc_ids


def document_mask(docs: Tensor) -> Tensor:
    """(B, T) document ids -> boolean (B, 1, T, T) SDPA mask: query i may see key j iff same document."""
    return (docs[:, :, None] == docs[:, None, :])[:, None]


def document_block_mask(docs: Tensor) -> Any:
    """The same mask as a FlexAttention BlockMask: fully masked (query, key) blocks are skipped."""
    B, T = docs.shape

    def same_document(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return docs[b, q] == docs[b, kv]

    return create_block_mask(same_document, B, None, T, T, device=docs.device)


def init_bert_weights(module: nn.Module) -> None:
    """BERT initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm, zero padding embedding."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
