"""Pre-training step throughput: our BertForMaskedLM (or T5) vs Hugging Face transformers' model.

Both models get the same shape, vocabulary, batch, sequence length, precision, masked
batches (15% dynamic masking, 80/10/10) and the same AdamW (our build_optimizer: BERT's
decay split, fused on CUDA), with gradient clipping at 1.0. One train step = zero_grad,
forward + loss, backward, clip, optimizer step. Steps of the two models alternate in
blocks inside one process, so drift in machine load hits both alike; the figure is the
median tokens/s over the blocks, and the speedup is the median of the ratios of adjacent
(ours, HF) blocks, which shared the machine's load of that moment. HF runs its SDPA
attention (``attn_implementation="sdpa"``) and its standard MLM head (vocabulary logits at
every position); ours computes them at the masked positions only and fuses the q/k/v
projections: those are the differences being measured.

Several settings (``--vocab 8192 30522 --precision fp32 bf16``: every combination) run in one
process with their blocks interleaved -- repeat r runs one (ours, HF) pair of every setting, in
an order rotated from repeat to repeat -- so the machine's load drifts over all settings alike.
In bf16 both models run the same ``torch.autocast(bfloat16)`` step (weights and optimizer fp32);
the JSON records the output dtypes of every ``nn.Linear`` of both models in one autocast
forward as the check that they really ran at the same precision. The JSON also keeps every
block's tokens/s, so each median and ratio can be recomputed, plus the command line, dates,
machine and library versions.

``--family t5`` compares our T5ForConditionalGeneration with transformers' at the same T5 v1.1
shape (``--shape`` from models.t5_config.T5_SIZES), on span-corrupted batches: rows of the raw
length whose corruption fills ``--seq-len`` encoder positions (T5's 15% noise, mean span 3),
targets padded with -100. Both compute the decoder's logits at every target position (the loss
needs them all); tokens/s counts encoder input tokens. HF runs with ``use_cache=False`` (no
key/value cache in training) and its SDPA attention.

MFU = our achieved model FLOP/s / peak (see tasks/engine/flops.py for the FLOP count and the
CPU peak estimate; pass --peak-tflops for a figure you trust).

    python benchmarks/pretrain_bench.py --shape mini --device cpu --vocab 8192 30522 \
        --precision fp32 bf16 --out benchmarks/results/pretrain_bench.json   # --quick: a smoke run
    python benchmarks/pretrain_bench.py --family t5 --shape tiny --vocab 8192 --precision fp32 bf16 \
        --out benchmarks/results/pretrain_bench_t5.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import now, provenance
from models.config import SIZES, EncoderConfig
from models.pretraining import BertForMaskedLM
from models.t5 import T5ForConditionalGeneration
from models.t5_config import T5_SIZES, T5Config
from tasks.commands.export_t5 import hf_t5_config
from tasks.engine.flops import default_peak_flops, flops_estimator
from tasks.engine.masking import mask_tokens
from tasks.engine.objectives import MLMObjective, SpanCorruptionObjective
from tasks.engine.optim import build_optimizer
from tasks.engine.span_corruption import SpanCorruption

SPECIALS = range(5)  # [PAD] [UNK] [CLS] [SEP] [MASK]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--family", choices=["bert", "t5"], default="bert", help="BERT MLM or T5 span corruption"
    )
    parser.add_argument("--shape", choices=sorted(set(SIZES) | set(T5_SIZES)), default="mini")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="few short blocks: a smoke run, not a figure")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--batch", type=int, default=None, help="rows per step (32 CPU, 128 CUDA; quick / 4)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--vocab", type=int, nargs="+", default=[30522], help="vocabulary size(s) (BERT's by default)"
    )
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], nargs="+", default=None, help="default fp32 CPU, bf16 CUDA"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed blocks per model and setting (default 15; quick 2)"
    )
    parser.add_argument("--steps", type=int, default=None, help="train steps per block (default 2)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per model (default 2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="hardware peak for MFU")
    parser.add_argument(
        "--dropout", type=float, default=0.1,
        help="hidden and attention dropout of both models (BERT's 0.1; the presets pre-train with 0.0)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def make_models(args: argparse.Namespace, vocab: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Our model and HF's, same shape, vocabulary and dropout, BERT (or T5) init."""
    if args.family == "t5":
        return make_t5_models(args, vocab, device)
    from transformers import BertConfig
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    shape = SIZES[args.shape]
    torch.manual_seed(0)
    drop = {"dropout": args.dropout, "attention_dropout": args.dropout}
    ours = BertForMaskedLM(EncoderConfig(vocab_size=vocab, max_position=512, **shape, **drop))
    hf_config = BertConfig(
        vocab_size=vocab,
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        intermediate_size=shape["intermediate_size"],
        max_position_embeddings=512,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
    )
    hf = HFBertForMaskedLM._from_config(hf_config, attn_implementation="sdpa")
    return ours.to(device).train(), hf.to(device).train()


def make_t5_models(args: argparse.Namespace, vocab: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    from transformers import T5Config as HFT5Config
    from transformers import T5ForConditionalGeneration as HFT5

    torch.manual_seed(0)
    cfg = T5Config.from_size(args.shape, vocab_size=vocab, dropout=args.dropout)
    ours = T5ForConditionalGeneration(cfg)
    hf_config = HFT5Config(
        **{k: v for k, v in hf_t5_config(cfg).items() if k != "architectures"}, use_cache=False
    )
    hf = HFT5._from_config(hf_config, attn_implementation="sdpa")
    if hf.lm_head.weight is hf.shared.weight:  # transformers 5 ties them whatever the config says
        hf.lm_head.weight = nn.Parameter(hf.shared.weight.detach().clone())  # v1.1: its own output layer
    if sum(p.numel() for p in hf.parameters()) != sum(p.numel() for p in ours.parameters()):
        raise SystemExit("pretrain_bench: the two T5 models differ in parameter count")
    return ours.to(device).train(), hf.to(device).train()


def make_batches(
    args: argparse.Namespace, vocab: int, n: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """Full rows ([CLS] tokens ... [SEP], no padding, like packed data) with fresh 15% masks each."""
    if args.family == "t5":
        return make_span_batches(args, vocab, n, device)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        ids = torch.randint(len(SPECIALS), vocab, (args.batch, args.seq_len), generator=gen)
        ids[:, 0], ids[:, -1] = 2, 3
        masked, labels = mask_tokens(ids, generator=gen, mask_id=4, vocab_size=vocab, special_ids=SPECIALS)
        batch = {"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels}
        batch["token_type_ids"] = torch.zeros_like(ids)
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def make_span_batches(
    args: argparse.Namespace, vocab: int, n: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """Raw rows sized so their corruption fills ``seq_len`` encoder positions, corrupted afresh."""
    corruption = SpanCorruption(tuple(range(3, 103)), eos_id=1, pad_id=0)
    raw, _ = corruption.raw_length(args.seq_len)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        rows = torch.randint(103, vocab, (args.batch, raw), generator=gen)
        batches.append({k: v.to(device) for k, v in corruption.batch(list(rows), gen).items()})
    return batches


def step_fn(model: nn.Module, loss_of: Callable, precision: str, device: torch.device) -> Callable:
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.01)

    def step(batch: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_of(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def ours_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(model, T5ForConditionalGeneration):
        return SpanCorruptionObjective()(model, batch)[0]
    return MLMObjective()(model, batch)[0]


def hf_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def timed_block(step: Callable, batches: list, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` train steps (device work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def linear_output_dtypes(
    model: nn.Module, loss_of: Callable, batch: dict, precision: str, device: torch.device
) -> dict[str, int]:
    """How many ``nn.Linear`` calls of one autocast forward returned each dtype (the precision check)."""
    seen: dict[str, int] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen[str(output.dtype)] = seen.get(str(output.dtype), 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss_of(model, batch)
    finally:
        for h in handles:
            h.remove()
    return seen


@dataclass
class Setting:
    """One (vocabulary, precision) setting: both models, their batches and their train steps."""

    vocab: int
    precision: str
    ours: nn.Module
    hf: nn.Module
    batches: list
    steps: dict[str, Callable]

    @property
    def name(self) -> str:
        return f"vocab{self.vocab}_{self.precision}"


def build_setting(args: argparse.Namespace, vocab: int, precision: str, device: torch.device) -> Setting:
    ours, hf = make_models(args, vocab, device)
    steps = {
        "ours": step_fn(ours, ours_loss, precision, device),
        "hf": step_fn(hf, hf_loss, precision, device),
    }
    return Setting(vocab, precision, ours, hf, make_batches(args, vocab, 4, device), steps)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_setting(
    args: argparse.Namespace, s: Setting, rates: dict[str, list[float]], device: torch.device
) -> dict:
    tokens_per_s, hf_tokens_per_s = statistics.median(rates["ours"]), statistics.median(rates["hf"])
    # adjacent blocks share the machine's load at that moment: their ratio is the robust figure
    paired = [o / h for o, h in zip(rates["ours"], rates["hf"], strict=True)]
    flops_per_token = flops_estimator(s.ours)(s.batches[0]) / (args.batch * args.seq_len)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else default_peak_flops(device, s.precision)
    return {
        "setting": s.name,
        "vocab": s.vocab,
        "precision": s.precision,
        "autocast": "torch.autocast(bfloat16) around forward + loss, both models"
        if s.precision == "bf16"
        else "none (fp32)",
        "linear_output_dtypes": {
            "ours": linear_output_dtypes(s.ours, ours_loss, s.batches[0], s.precision, device),
            "hf": linear_output_dtypes(s.hf, hf_loss, s.batches[0], s.precision, device),
        },
        "parameters": {
            "ours": sum(p.numel() for p in s.ours.parameters()),
            "hf": sum(p.numel() for p in s.hf.parameters()),
        },
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_range": [min(rates["ours"]), max(rates["ours"])],
        "hf_tokens_per_s": hf_tokens_per_s,
        "hf_tokens_per_s_range": [min(rates["hf"]), max(rates["hf"])],
        "speedup": statistics.median(paired),
        "speedup_range": [min(paired), max(paired)],
        "speedup_of_medians": tokens_per_s / hf_tokens_per_s,
        "paired_speedups": paired,
        "mfu": tokens_per_s * flops_per_token / peak if peak else None,
        "hf_mfu": hf_tokens_per_s * flops_per_token / peak if peak else None,
        "peak_flops": peak,
        "flops_per_token": flops_per_token,
        "all_tokens_per_s": rates,
    }


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [build_setting(args, v, p, device) for v, p in itertools.product(args.vocab, args.precision)]
    for s in settings:  # warm-up: allocator, kernels, autotuning
        for name in s.steps:
            timed_block(s.steps[name], s.batches, args.warmup_steps, device)
    rates = {s.name: {"ours": [], "hf": []} for s in settings}
    orders = []
    tokens = args.batch * args.seq_len * args.steps
    for r in range(args.repeats):
        k = r % len(settings)
        order = settings[k:] + settings[:k]  # rotate which setting goes first
        models = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")  # alternate who goes first
        orders.append([f"{s.name}/{m}" for s in order for m in models])
        for s in order:
            for name in models:
                rates[s.name][name].append(tokens / timed_block(s.steps[name], s.batches, args.steps, device))
    return {
        "family": args.family,
        "shape": args.shape,
        "shape_config": (T5_SIZES if args.family == "t5" else SIZES)[args.shape],
        "batch": args.batch,
        "seq_len": args.seq_len,
        "dropout": args.dropout,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "warmup_steps": args.warmup_steps,
        "tokens_per_block": tokens,
        "block_order": orders,
        "settings": [summarize_setting(args, s, rates[s.name], device) for s in settings],
    }


PACKAGES = ("torch", "transformers", "numpy")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.shape not in (T5_SIZES if args.family == "t5" else SIZES):
        raise SystemExit(f"pretrain_bench: --shape {args.shape} is not a {args.family} size")
    args.batch = args.batch or (128 if args.device == "cuda" else 32) // (4 if args.quick else 1)
    args.precision = args.precision or ["bf16" if args.device == "cuda" else "fp32"]
    args.repeats = args.repeats or (2 if args.quick else 15)
    args.steps = args.steps or 2
    started = now()
    result = run(args)
    result = {"provenance": provenance(PACKAGES, started), "date": started[:10], **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"{result['shape']}, batch {result['batch']}, seq {result['seq_len']}, {result['device']}, "
        f"torch {result['provenance']['versions']['torch']}, {result['repeats']} paired blocks"
    )
    print(f"{'setting':<20}{'ours tok/s':>12}{'HF tok/s':>10}{'speedup (range)':>22}{'MFU':>7}{'HF MFU':>8}")
    for r in result["settings"]:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a"
        hf_mfu = f"{r['hf_mfu']:.3f}" if r["hf_mfu"] is not None else "n/a"
        lo, hi = r["speedup_range"]
        speedup = f"{r['speedup']:.2f}x ({lo:.2f}-{hi:.2f})"
        print(
            f"{r['setting']:<20}{r['tokens_per_s']:>12.0f}{r['hf_tokens_per_s']:>10.0f}"
            f"{speedup:>22}{mfu:>7}{hf_mfu:>8}"
        )


if __name__ == "__main__":
    main()
