"""Where tensors go: the one device choice of pre-training, fine-tuning and scoring, and precision."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor

DeviceChoice = Literal["auto", "cpu", "cuda"]


def pick_device(choice: DeviceChoice = "auto") -> torch.device:
    """auto: CUDA when available, else CPU; asking for CUDA without one is an error, not a fallback."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move tensors to ``device``; leave other values (e.g. a task name) alone."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


@contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast when asked for (CPU or CUDA); a no-op for fp32."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def cpu_bf16_instructions() -> dict[str, bool | None]:
    """AVX512-BF16 and AMX tiles as torch.cpu's private probes report them (None: no such probe)."""
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    found = {name: getattr(torch.cpu, attr, None) for name, attr in probes.items()}
    return {name: (bool(probe()) if probe is not None else None) for name, probe in found.items()}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 matrix instructions (CUDA: torch.cuda.is_bf16_supported; x86
    CPUs: AVX512-BF16 or AMX). Without them PyTorch's CPU bf16 matmul takes a fallback path: the
    T5 tiny training step ran 12-18x slower in bf16 than in fp32 on a 2-core AVX2 EPYC
    (``benchmarks/results/pretrain_bench_t5_avx2_bf16.json``), so bf16 autocast there costs time
    instead of saving it. A probe this torch lacks counts as present: no warning on a guess."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True  # no known trap elsewhere: say nothing
    return any(found is not False for found in cpu_bf16_instructions().values())


def precision_warning(device: torch.device, precision: str) -> str | None:
    """A line for the log when bf16 is asked for on hardware that runs it slower than fp32."""
    if precision != "bf16" or native_bf16(device):
        return None
    return (
        f"precision bf16 on {device.type} without bf16 matrix instructions (no AVX512-BF16 / AMX here): "
        'bf16 matmuls run far slower than fp32 on this machine; set train.precision = "fp32"'
    )


def rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG fork_rng must save/restore (none on CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
