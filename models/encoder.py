"""BERT-style Transformer encoder: embeddings -> N x (attention, feed-forward) blocks.

Follows the paper's structure (Devlin et al., 2019) with one switch: ``norm="post"`` is the
original residual-then-LayerNorm block, ``norm="pre"`` normalises the input of each sub-layer
and adds a final LayerNorm (more stable for deep or high-LR runs). Attention goes through
``F.scaled_dot_product_attention`` so PyTorch picks the fastest kernel for the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import EncoderConfig


class Embeddings(nn.Module):
    """word + learned absolute position + token type, then LayerNorm and dropout."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_id)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        T = input_ids.size(1)
        positions = torch.arange(T, device=input_ids.device)  # (T,), broadcast over the batch
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)  # (B, T, H)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key-padding mask (padding keys get no attention weight)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # one matmul for q, k and v
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attention_dropout = cfg.attention_dropout
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=2)  # 3 x (B, T, H)
        # (B, T, H) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2) for t in (q, k, v))
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, H)  # re-assemble heads side by side
        return self.dropout(self.out(y))


class FeedForward(nn.Module):
    """Position-wise H -> I -> H MLP with GELU."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """One encoder layer; ``pre`` decides where the LayerNorms sit relative to the residuals."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.attention = SelfAttention(cfg)
        self.attention_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        if self.pre:  # x + f(LN(x)): the residual stream is never normalised
            x = x + self.attention(self.attention_norm(x), key_mask)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attention_norm(x + self.attention(x, key_mask))  # LN(x + f(x)): original BERT
        return self.ffn_norm(x + self.ffn(x))


class BertEncoder(nn.Module):
    """Token ids -> contextual hidden states (B, T, H)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        # pre-LN leaves the residual stream un-normalised, so it needs one LayerNorm at the end
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else None
        self.apply(init_bert_weights)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        seq_len = input_ids.size(1)
        if seq_len > self.cfg.max_position:
            raise ValueError(f"sequence length {seq_len} exceeds max_position {self.cfg.max_position}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        key_mask = key_padding_mask(attention_mask)
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.final_norm(x) if self.final_norm is not None else x


def key_padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """(B, T) 1=real/0=pad -> boolean (B, 1, 1, T) mask for SDPA (True = may attend).

    Returns None when there is no padding so SDPA can use its fastest mask-free kernels.
    """
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    if bool(keep.all()):
        return None
    return keep[:, None, None, :]  # broadcast over heads and query positions


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
        nn.init.zeros_(module.bias)
