"""The on-disk layout of a fine-tuned model set, shared by the finetune and evaluate stages.

A fine-tune output is a plain checkpoint dir when one multi-task model serves every task.
Single-task fine-tuning (one model per task) and multi-task + per-task fine-tuning add
per-task checkpoints under ``per_task/<TASK>/`` and a ``members.json`` mapping each task
to the dir (relative) whose model scores it; a task not listed uses the top-level model.
Several seeds put one such set per seed under ``seeds/<seed>/`` and name them, with the
seed whose set is also at the top level, in ``finetune.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

MEMBERS = "members.json"
FINETUNE_INFO = "finetune.json"


class ModelSetError(ValueError):
    """A model-set dir whose members.json / finetune.json points at something that is not there."""


def write_members(directory: Path, members: Mapping[str, str]) -> None:
    """Record which sub-dir (relative to `directory`) scores each task; nothing to write if none."""
    if members:
        (directory / MEMBERS).write_text(json.dumps(dict(members), indent=2, sort_keys=True))


def member_dir(directory: Path, task: str) -> Path:
    """The checkpoint dir that scores `task` in the model set at `directory`."""
    path = directory / MEMBERS
    members = json.loads(path.read_text()) if path.is_file() else {}
    target = directory / members.get(task, ".")
    if not (target / "config.json").is_file():
        where = f"{path} maps {task!r} to {members[task]!r}" if task in members else f"{directory}"
        raise ModelSetError(f"{where}: no checkpoint (config.json) for task {task!r} there")
    return target


def seed_sets(directory: Path) -> dict[int, Path]:
    """``{seed: model-set dir}`` of a several-seed fine-tune output; empty for a single model set."""
    path = directory / FINETUNE_INFO
    if not path.is_file():
        return {}
    info = json.loads(path.read_text())
    seeds = info.get("seed_dirs", {})
    return {int(seed): directory / rel for seed, rel in seeds.items()}


def median_seed(directory: Path) -> int | None:
    """The seed whose model set is the stage's model (top level), as finetune.json records it."""
    path = directory / FINETUNE_INFO
    return json.loads(path.read_text()).get("median_seed") if path.is_file() else None
