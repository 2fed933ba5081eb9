"""Data-parallel plumbing for fit(): who am I, wrap the model, agree on a stop.

Launch is ``torchrun`` (see tasks/train/pretrain.py); inside fit() a run with an initialised
process group trains a DistributedDataParallel copy per rank, each rank reading its own
micro-batches (index ``i * world + rank`` of the deterministic source), and only rank 0
logs, evaluates and checkpoints. The backend is NCCL on GPUs and gloo on CPU processes. With
no process group everything degrades to world 1, rank 0: the single-device run is the same
code path.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` when a process group exists; the model itself otherwise."""
    if not is_distributed():
        return model
    if device.type != "cuda":
        return DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index])


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any (so all ranks stop at the same step)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def init_from_env(device_type: str) -> torch.device:
    """Join the process group torchrun describes in the environment; returns this rank's device."""
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return torch.device("cuda", local_rank) if device_type == "cuda" else torch.device("cpu")


def sum_over_ranks(values: Tensor) -> Tensor:
    """Element-wise sum of ``values`` over all ranks (``values`` itself without a process group).

    Every rank must pass the same length, in the same order: fit() passes its objective's metric
    means, and pre-training objectives report the same names on every micro-batch.
    """
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def first_given(value: object | None) -> object:
    """The first non-None ``value`` over the ranks, on every rank (a launch spec only some ranks read)."""
    if not is_distributed():
        assert value is not None
        return value
    gathered: list[object | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    found = [v for v in gathered if v is not None]
    if not found:
        raise RuntimeError("no rank of the process group was given a launch spec")
    return found[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
