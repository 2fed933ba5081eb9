"""Step 2 of benchmarks/gpu_check.py: pre-training step throughput, bertflow vs transformers (HF).

Shape ``base`` (12 layers / 768 / 12 heads / FFN 3072), sequence 128, batch 128, bf16 autocast
(fp32 weights, the engine's fused AdamW, clipping at 1.0), vocabularies 30,522 and 8,192. Four
variants per vocabulary: ``bertflow_eager``, ``hf_sdpa_eager`` (``transformers.BertForMaskedLM``
with ``attn_implementation="sdpa"``), ``bertflow_compiled``, ``hf_sdpa_compiled`` (``torch.compile``
of the whole model, default inductor mode). They run in ``ORDER``: the four eager ones first (a few
seconds each), then the compiled ones (tens of seconds of compilation each) while the step's budget
lasts; the rest is null with the reason. All variants get the same batches: full rows, exactly
15 % of positions masked (80/10/10), so a compiled model sees one shape and compiles once.

One train step = zero_grad, forward + loss under autocast, backward, clip, optimizer step.
Timing: ``WARMUP`` steps (the first one, which includes compilation, is reported as
``first_step_s``), then ``BLOCKS`` blocks of ``STEPS_PER_BLOCK`` steps, each between two
``torch.cuda.synchronize``; tokens/s is the median block. MFU = tokens/s x model FLOPs per token
(tasks/engine/flops.py: the MLM decoder credited on masked positions only, for both models) /
the bf16 peak of the device's row in ``tasks.engine.flops.GPU_PEAKS`` (datasheet, dense);
``mfu_vs_measured_matmul`` divides by an 8192^3 bf16 matmul measured in the same process instead.

In the CPU dry run the eager variants run one step of a 2 x 64 toy to keep the code working, and
every figure is null with the reason (CPU timings of a toy say nothing about a GPU).
"""

from __future__ import annotations

import gc
import statistics
import time
from functools import partial
from typing import Any

import torch
from torch import nn

from benchmarks.gpu_common import Context, random_batches, run_check, sync
from models.config import SIZES, EncoderConfig
from models.pretraining import BertForMaskedLM
from tasks.engine.device import to_device
from tasks.engine.flops import GPU_PEAKS, flops_estimator
from tasks.engine.objectives import MLMObjective
from tasks.engine.optim import build_optimizer

VOCABS = (30_522, 8_192)
VARIANTS = ("bertflow_eager", "hf_sdpa_eager", "bertflow_compiled", "hf_sdpa_compiled")
ORDER = [(v, m) for m in VARIANTS[:2] for v in VOCABS] + [(v, m) for v in VOCABS for m in VARIANTS[2:]]
SHAPE = "base"
BATCH, SEQ_LEN = 128, 128
WARMUP, BLOCKS, STEPS_PER_BLOCK = 3, 5, 10
EAGER_NEED_S = 10.0  # model build + warm-up + 50 timed steps, with room
FIRST_COMPILE_NEED_S = 35.0  # a guess until one compile was measured; then its time x 1.2 + 10 s
DRY = {"batch": 4, "seq_len": 32, "warmup": 1, "blocks": 1, "steps": 1}
TOY = {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}


def shape(ctx: Context) -> dict[str, int]:
    return TOY if ctx.dry else SIZES[SHAPE]


def peak_info(device: torch.device) -> dict[str, Any]:
    """The GPU_PEAKS row matching the device name (the divisor of MFU)."""
    if device.type != "cuda":
        return {
            "table": "tasks.engine.flops.GPU_PEAKS",
            "table_entry": None,
            "bf16_flops": None,
            "fp32_flops": None,
            "reason": "CPU dry run: no GPU peak, MFU is null",
        }
    name = torch.cuda.get_device_name(device)
    entry = next((key for key in GPU_PEAKS if key in name), None)
    bf16, fp32 = GPU_PEAKS[entry] if entry else (None, None)
    return {
        "table": "tasks.engine.flops.GPU_PEAKS",
        "device_name": name,
        "table_entry": entry,
        "bf16_flops": bf16,
        "fp32_flops": fp32,
        "reason": None if entry else f"no row of GPU_PEAKS matches {name!r}: MFU is null",
    }


def measure_matmul(ctx: Context) -> dict[str, Any]:
    """bf16 8192^3 matmul on random data: the ceiling this card reaches through PyTorch today."""
    if not ctx.cuda:
        return {"passed": None, "reason": "CPU dry run: no GPU matmul ceiling", "tflops": None}
    n = 8192
    g = torch.Generator(device=ctx.device).manual_seed(0)
    a = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16, generator=g)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / 10
    return {"passed": True, "tflops": 2 * n**3 / seconds / 1e12, "size": n, "repeats": 10}


def run(entry: dict[str, Any], ctx: Context) -> None:
    dims = (
        DRY
        if ctx.dry
        else {
            "batch": BATCH,
            "seq_len": SEQ_LEN,
            "warmup": WARMUP,
            "blocks": BLOCKS,
            "steps": STEPS_PER_BLOCK,
        }
    )
    entry.update(
        {
            "shape": "toy 2x64 (dry run)" if ctx.dry else SHAPE,
            "shape_config": shape(ctx),
            "batch": dims["batch"],
            "seq_len": dims["seq_len"],
            "precision": "bf16 autocast, fp32 weights",
            "optimizer": "engine build_optimizer (fused AdamW on CUDA), clip 1.0",
            "timing": f"{dims['warmup']} warm-up steps; median of {dims['blocks']} x {dims['steps']} steps",
            "peak": peak_info(ctx.device),
        }
    )
    run_check(entry, "matmul_ceiling", partial(measure_matmul, ctx), ctx, 3)
    results = entry.setdefault("results", {})
    batches = {}
    for vocab in VOCABS:
        batches[vocab] = [
            to_device(b, ctx.device) for b in random_batches(vocab, dims["batch"], dims["seq_len"], 4)
        ]
        results[f"vocab_{vocab}"] = {"flops_per_token": flops_per_token(ctx, vocab, batches[vocab][0])}
    compile_s: list[float] = []
    for vocab, variant in ORDER:  # every eager variant first: cheap; then the compiles, as time allows
        compiled = variant.endswith("compiled")
        if compiled:
            need = max(compile_s) * 1.2 + 10 if compile_s else FIRST_COMPILE_NEED_S
        else:
            need = EAGER_NEED_S
        table = results[f"vocab_{vocab}"]
        fn = partial(measure, ctx, vocab, variant, batches[vocab], dims, table["flops_per_token"], entry)
        result = run_check(table, variant, fn, ctx, 0 if ctx.dry else need)
        if result.get("compile_s") is not None:
            compile_s.append(result["compile_s"])
        free(ctx, compiled)
    for vocab in VOCABS:
        table = results[f"vocab_{vocab}"]
        table.update({variant: table.pop(variant) for variant in VARIANTS})  # in VARIANTS order
        for name in ("bertflow", "hf_sdpa"):
            eager, comp = table[f"{name}_eager"], table[f"{name}_compiled"]
            table[f"{name}_compile_speedup"] = ratio(comp.get("tokens_per_s"), eager.get("tokens_per_s"))
        table["bertflow_vs_hf_eager"] = ratio(
            table["bertflow_eager"].get("tokens_per_s"), table["hf_sdpa_eager"].get("tokens_per_s")
        )
        table["bertflow_vs_hf_compiled"] = ratio(
            table["bertflow_compiled"].get("tokens_per_s"), table["hf_sdpa_compiled"].get("tokens_per_s")
        )
    ctx.write()
    ctx.notes["throughput"] = results


def free(ctx: Context, compiled: bool) -> None:
    """Drop the last variant's model, optimizer state and (compiled) graphs before the next one."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if ctx.cuda:
        torch.cuda.empty_cache()


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def encoder_config(ctx: Context, vocab: int) -> EncoderConfig:
    return EncoderConfig(vocab_size=vocab, max_position=512, **shape(ctx))


def flops_per_token(ctx: Context, vocab: int, batch: dict[str, torch.Tensor]) -> float:
    """Model FLOPs per token of one training step (counted on a parameter-free meta copy)."""
    with torch.device("meta"):
        model = BertForMaskedLM(encoder_config(ctx, vocab))
    return flops_estimator(model)(batch) / batch["input_ids"].numel()


def make_model(ctx: Context, vocab: int, hf: bool) -> nn.Module:
    """bertflow's or Hugging Face's BertForMaskedLM, same shape, BERT init, dropout 0.1 (pre-training's)."""
    torch.manual_seed(0)
    if not hf:
        return BertForMaskedLM(encoder_config(ctx, vocab)).to(ctx.device).train()
    from transformers import BertConfig
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    dims = shape(ctx)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=dims["hidden_size"],
        num_hidden_layers=dims["num_layers"],
        num_attention_heads=dims["num_heads"],
        intermediate_size=dims["intermediate_size"],
        max_position_embeddings=512,
    )
    model = HFBertForMaskedLM._from_config(config, attn_implementation="sdpa")
    return model.to(ctx.device).train()


def ours_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return MLMObjective()(model, batch)[0]


def hf_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def measure(
    ctx: Context,
    vocab: int,
    variant: str,
    batches: list[dict[str, torch.Tensor]],
    dims: dict[str, int],
    per_token: float,
    entry: dict[str, Any],
) -> dict[str, Any]:
    compiled, hf = variant.endswith("compiled"), variant.startswith("hf")
    empty = {"tokens_per_s": None, "mfu": None}
    if compiled and not ctx.cuda:
        return {
            "passed": None,
            **empty,
            "reason": "CPU dry run: torch.compile (inductor) not run; the GPU run measures it",
        }
    model = make_model(ctx, vocab, hf)
    runner = torch.compile(model) if compiled else model
    loss_of = hf_loss if hf else ours_loss
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.01)
    last = torch.zeros(())

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            loss = loss_of(runner, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    sync(ctx.device)
    clock = time.perf_counter()
    last = step(batches[0])
    sync(ctx.device)
    first_step_s = time.perf_counter() - clock
    for i in range(1, dims["warmup"]):
        step(batches[i % len(batches)])
    rates = []
    tokens = dims["batch"] * dims["seq_len"] * dims["steps"]
    for _ in range(dims["blocks"]):
        sync(ctx.device)
        clock = time.perf_counter()
        for i in range(dims["steps"]):
            last = step(batches[i % len(batches)])
        sync(ctx.device)
        rates.append(tokens / (time.perf_counter() - clock))
    final_loss = float(last)
    result: dict[str, Any] = {
        "passed": bool(torch.isfinite(torch.tensor(final_loss))),
        "model": "transformers.BertForMaskedLM (sdpa)" if hf else "bertflow BertForMaskedLM",
        "compiled": compiled,
        "parameters": sum(p.numel() for p in model.parameters()),
        "last_loss": final_loss,
        "first_step_s": round(first_step_s, 3),
    }
    if not ctx.cuda:
        return (
            result
            | empty
            | {
                "reason": "CPU dry run: one step of a toy shape ran; its timing says nothing about a GPU",
                "smoke_tokens_per_s_not_a_figure": statistics.median(rates),
            }
        )
    tps = statistics.median(rates)
    step_s = dims["batch"] * dims["seq_len"] / tps
    peak = entry["peak"]["bf16_flops"]
    ceiling = (entry.get("matmul_ceiling") or {}).get("tflops")
    result |= {
        "tokens_per_s": tps,
        "tokens_per_s_range": [min(rates), max(rates)],
        "step_ms": step_s * 1e3,
        "mfu": tps * per_token / peak if peak else None,
        "mfu_vs_measured_matmul": tps * per_token / (ceiling * 1e12) if ceiling else None,
        "compile_s": round(first_step_s - step_s, 2) if compiled else None,
        "max_memory_gib": torch.cuda.max_memory_allocated(ctx.device) / 2**30,
    }
    return result
