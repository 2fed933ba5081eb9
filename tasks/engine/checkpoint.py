"""Resumable training state on disk: weights as safetensors, the rest as a weights_only torch file.

A checkpoint dir holds ``model.safetensors`` (tagged with its step in the metadata) and
``trainer_state.pt`` (optimizer, scheduler, RNG states, step / tokens / seconds). A SIGKILL can
land at any instant, so the pair is replaced in an order that always leaves a loadable state:

1. new weights -> ``model.next.safetensors`` (temp file + rename),
2. new state   -> ``trainer_state.pt``       (temp file + rename): the commit point,
3. ``model.next.safetensors`` -> ``model.safetensors`` (rename).

Killed before 2: the old pair is intact. Killed between 2 and 3: the state names step N, the
pending weights are step N, and loading finishes the rename. After 3: consistent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from models.io import write_atomic_safetensors

WEIGHTS_FILE = "model.safetensors"
PENDING_WEIGHTS_FILE = "model.next.safetensors"
STATE_FILE = "trainer_state.pt"


@dataclass
class Progress:
    """What a checkpoint must remember besides weights and optimizer: the position in the run."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0


def has_checkpoint(dir: Path | None) -> bool:
    return dir is not None and (dir / STATE_FILE).is_file()


def save_training_state(
    dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
) -> None:
    """Weights + trainer state, replaced in the crash-safe order of the module docstring."""
    dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic_safetensors(dir / PENDING_WEIGHTS_FILE, weights, metadata={"step": str(progress.step)})
    state: dict[str, Any] = {
        "step": progress.step,
        "tokens": progress.tokens,
        "seconds": progress.seconds,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    tmp = dir / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, dir / STATE_FILE)
    os.replace(dir / PENDING_WEIGHTS_FILE, dir / WEIGHTS_FILE)


def load_training_state(
    dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> Progress:
    """Restore everything save_training_state wrote (finishing an interrupted weights rename)."""
    state = torch.load(dir / STATE_FILE, map_location="cpu", weights_only=True)
    weights = settle_weights(dir, state["step"])
    model.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Progress(step=state["step"], tokens=state["tokens"], seconds=state["seconds"])


def settle_weights(dir: Path, step: int) -> Path:
    """The weights file of ``step``: model.safetensors, or the pending file a kill left un-renamed."""
    pending = dir / PENDING_WEIGHTS_FILE
    if pending.is_file() and read_weights_step(pending) == step:
        os.replace(pending, dir / WEIGHTS_FILE)
    weights_step = read_weights_step(dir / WEIGHTS_FILE) if (dir / WEIGHTS_FILE).is_file() else None
    if weights_step != step:
        raise RuntimeError(
            f"{dir}: {WEIGHTS_FILE} is from step {weights_step} but {STATE_FILE} from step {step}; "
            "the checkpoint is inconsistent: delete the directory to restart"
        )
    return dir / WEIGHTS_FILE


def read_weights_step(path: Path) -> int | None:
    """The training step recorded in a safetensors file's metadata (None if absent)."""
    with safe_open(str(path), framework="pt") as handle:
        step = (handle.metadata() or {}).get("step")
    return int(step) if step is not None else None
