"""Training FLOPs per batch and the hardware peak they are divided by (model FLOPs utilisation).

MFU = achieved model FLOP/s / peak FLOP/s. Model FLOPs of one training step (forward +
backward = 3x forward, each multiply-add = 2 FLOPs):

    6 * N * tokens                      dense matmuls; N = parameters outside the embeddings
  + 12 * layers * hidden * T * tokens   attention scores and weighted values (QK^T and AV)
  + 6 * vocab * hidden * masked         the tied decoder, run on masked positions only

``tokens`` counts every position computed (B*T, padding included) because the hardware does
that work. The embedding lookup is free (no matmul); the decoder is counted only where it
runs, so an MLM head on all tokens (Hugging Face) and one on masked tokens (ours) are
credited the same useful work: MFU then compares implementations fairly.

A T5 encoder-decoder (``t5_flops_estimator``) counts the same way per stack: encoder blocks on
the S encoder positions, decoder blocks on the T target positions except the cross-attention
keys/values, which are projected from the S encoder positions; attention 12 * blocks *
inner * length per query position (self and cross), and the untied output layer on every
target position (T5 scores all of them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from models.t5 import T5ForConditionalGeneration

log = logging.getLogger(__name__)

# Dense bf16 / fp32 tensor-core peaks (FLOP/s) from the vendors' data sheets, SXM parts.
GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L40S": (362e12, 91.6e12),
    "A10": (125e12, 31.2e12),
    "L4": (121e12, 30.3e12),
    "V100": (125e12, 15.7e12),  # fp16 tensor cores; V100 has no bf16
}
# CPU estimate: each core retires one 512-bit (or two 256-bit) FMA per cycle = 16 fp32 lanes x 2
# FLOPs = 32 FLOP/cycle, at an assumed 3.0 GHz. Real parts vary by ~2x; pass peak_flops for a
# figure you trust. bf16 doubles it: AVX512-BF16's dot product (VDPBF16PS) does two bf16
# multiply-adds per fp32 lane, and oneDNN runs bf16 matmuls through it (or AMX, faster still).
CPU_FLOPS_PER_CYCLE = 32
CPU_BF16_FACTOR = 2
CPU_HZ = 3.0e9

FlopsFn = Callable[[Mapping[str, Any]], float]


def default_peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of ``device`` at ``precision`` from the table/estimate above; None if unknown."""
    if device.type == "cpu":
        threads = torch.get_num_threads() or os.cpu_count() or 1
        return threads * CPU_HZ * CPU_FLOPS_PER_CYCLE * (CPU_BF16_FACTOR if precision == "bf16" else 1)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bf16, fp32) in GPU_PEAKS.items():
            if key in name:
                return bf16 if precision == "bf16" else fp32
        log.info("no peak FLOP/s known for %s; MFU is not logged (set peak_flops)", name)
    return None


def embedding_parameters(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))


def flops_estimator(model: nn.Module) -> FlopsFn:
    """FLOPs of one training micro-batch for ``model`` (see the module docstring).

    Reads layers / hidden / vocab from ``model.cfg`` when there is one (every model in models/);
    an ELECTRA model adds its generator's attention too; T5 has its own count. Other models
    count 6 * N * tokens.
    """
    if isinstance(model, T5ForConditionalGeneration):
        return t5_flops_estimator(model)
    dense_params = sum(p.numel() for p in model.parameters()) - embedding_parameters(model)
    cfgs = [c for c in (getattr(model, "cfg", None), getattr(model, "generator_cfg", None)) if c is not None]
    attention_width = sum(c.num_layers * c.hidden_size for c in cfgs)
    decoder = sum(c.vocab_size * c.hidden_size for c in cfgs[-1:])  # the MLM head (generator's for ELECTRA)

    def flops(batch: Mapping[str, Any]) -> float:
        ids = batch["input_ids"]
        tokens, seq_len = ids.numel(), ids.size(-1)
        masked = int((batch["labels"] != -100).sum()) if "labels" in batch and decoder else 0
        return (
            6.0 * dense_params * tokens + 12.0 * attention_width * seq_len * tokens + 6.0 * decoder * masked
        )

    return flops


def t5_flops_estimator(model: T5ForConditionalGeneration) -> FlopsFn:
    """FLOPs of one training micro-batch of a T5 model: input_ids (B, S), labels (B, T)."""
    cfg = model.cfg

    def params(modules: nn.Module) -> int:
        return sum(p.numel() for p in modules.parameters())

    cross_kv = sum(params(b.cross_attention.k) + params(b.cross_attention.v) for b in model.decoder_blocks)
    encoder, decoder = params(model.encoder_blocks), params(model.decoder_blocks) - cross_kv
    output = cfg.vocab_size * cfg.d_model

    def flops(batch: Mapping[str, Any]) -> float:
        (B, S), T = batch["input_ids"].shape, batch["labels"].size(-1)
        encoder_tokens, decoder_tokens = B * S, B * T
        dense = (encoder + cross_kv) * encoder_tokens + (decoder + output) * decoder_tokens
        attention = cfg.num_layers * S * encoder_tokens + cfg.num_decoder_layers * (T + S) * decoder_tokens
        return 6.0 * dense + 12.0 * cfg.inner_dim * attention

    return flops
