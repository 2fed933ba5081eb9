"""Pre-training step throughput: our BertForMaskedLM vs Hugging Face transformers' BertForMaskedLM.

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

MFU = our achieved model FLOP/s / peak (see tasks/engine/flops.py for the FLOP count and the
CPU peak estimate; pass --peak-tflops for a figure you trust).

    python benchmarks/pretrain_bench.py --shape mini --device cpu --quick --out bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.config import SIZES, EncoderConfig
from models.pretraining import BertForMaskedLM
from tasks.engine.flops import default_peak_flops, flops_estimator
from tasks.engine.masking import mask_tokens
from tasks.engine.objectives import MLMObjective
from tasks.engine.optim import build_optimizer

SPECIALS = range(5)  # [PAD] [UNK] [CLS] [SEP] [MASK]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SIZES), default="mini")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="few short blocks: a smoke run, not a figure")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--batch", type=int, default=None, help="rows per step (32 CPU, 128 CUDA; quick / 4)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=30522, help="vocabulary size (BERT's by default)")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default=None, help="default fp32 CPU, bf16 CUDA"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed blocks per model (default 7; quick 2)"
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per block (default 5; quick 2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="hardware peak for MFU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def make_models(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Our model and HF's, same shape and vocabulary, BERT init (dropout 0.1 as in pre-training)."""
    from transformers import BertConfig
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    shape = SIZES[args.shape]
    torch.manual_seed(0)
    ours = BertForMaskedLM(EncoderConfig(vocab_size=args.vocab, max_position=512, **shape))
    hf_config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        intermediate_size=shape["intermediate_size"],
        max_position_embeddings=512,
    )
    hf = HFBertForMaskedLM._from_config(hf_config, attn_implementation="sdpa")
    return ours.to(device).train(), hf.to(device).train()


def make_batches(args: argparse.Namespace, n: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Full rows ([CLS] tokens ... [SEP], no padding, like packed data) with fresh 15% masks each."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        ids = torch.randint(len(SPECIALS), args.vocab, (args.batch, args.seq_len), generator=gen)
        ids[:, 0], ids[:, -1] = 2, 3
        masked, labels = mask_tokens(
            ids, generator=gen, mask_id=4, vocab_size=args.vocab, special_ids=SPECIALS
        )
        batch = {"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels}
        batch["token_type_ids"] = torch.zeros_like(ids)
        batches.append({k: v.to(device) for k, v in batch.items()})
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


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, hf = make_models(args, device)
    batches = make_batches(args, 4, device)
    steps = {
        "ours": step_fn(ours, ours_loss, args.precision, device),
        "hf": step_fn(hf, hf_loss, args.precision, device),
    }
    for name in steps:  # warm-up: allocator, kernels, autotuning
        timed_block(steps[name], batches, 2, device)
    rates: dict[str, list[float]] = {"ours": [], "hf": []}
    tokens = args.batch * args.seq_len * args.steps
    for r in range(args.repeats):
        order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")  # alternate who goes first
        for name in order:
            rates[name].append(tokens / timed_block(steps[name], batches, args.steps, device))
    tokens_per_s, hf_tokens_per_s = statistics.median(rates["ours"]), statistics.median(rates["hf"])
    # adjacent blocks share the machine's load at that moment: their ratio is the robust figure
    paired = [o / h for o, h in zip(rates["ours"], rates["hf"], strict=True)]
    flops_per_token = flops_estimator(ours)(batches[0]) / (args.batch * args.seq_len)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else default_peak_flops(device, args.precision)
    return {
        "shape": args.shape,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "vocab": args.vocab,
        "precision": args.precision,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "torch": torch.__version__,
        "quick": args.quick,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "tokens_per_s": tokens_per_s,
        "hf_tokens_per_s": hf_tokens_per_s,
        "speedup": statistics.median(paired),
        "speedup_of_medians": tokens_per_s / hf_tokens_per_s,
        "paired_speedups": paired,
        "mfu": tokens_per_s * flops_per_token / peak if peak else None,
        "hf_mfu": hf_tokens_per_s * flops_per_token / peak if peak else None,
        "peak_flops": peak,
        "all_tokens_per_s": rates,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.batch = args.batch or (128 if args.device == "cuda" else 32) // (4 if args.quick else 1)
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    args.repeats = args.repeats or (2 if args.quick else 15)
    args.steps = args.steps or 2
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    mfu = f"{result['mfu']:.3f}" if result["mfu"] is not None else "n/a"
    print(f"{'model':<24}{'tokens/s':>12}{'MFU':>8}")
    print(f"{'bertflow':<24}{result['tokens_per_s']:>12.0f}{mfu:>8}")
    hf_mfu = f"{result['hf_mfu']:.3f}" if result["hf_mfu"] is not None else "n/a"
    print(f"{'transformers (sdpa)':<24}{result['hf_tokens_per_s']:>12.0f}{hf_mfu:>8}")
    print(
        f"speedup {result['speedup']:.2f}x  ({result['shape']}, batch {result['batch']}, "
        f"seq {result['seq_len']}, {result['precision']}, {result['device']}, torch {result['torch']})"
    )


if __name__ == "__main__":
    main()
