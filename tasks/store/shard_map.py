"""Shard-mapped steps: how a data stage runs one function over many independent items.

A data stage splits its work into steps whose items do not depend on each other (one per
input shard, file group, LSH band or chunk of candidate pairs) and hands each step to its
job's ``ShardMap``. The run layer's map submits every item as its own Prefect task on the
task runner the user picked (threads on this machine, or a Dask cluster); ``inline_map``,
the default outside a flow, runs them one after another here. Whoever runs it, an item runs
through ``run_item``:

* its files and its JSON result land in ``<stage scratch>/<step>/<index>/``, built in a
  temporary sibling and renamed into place, so a half-done item never looks finished;
* a finished item is never run again for the same stage fingerprint (the scratch directory
  is per fingerprint and outlives a killed run), so a lost worker or a killed run costs the
  unfinished items only, and two workers running one item (Dask re-runs a task whose worker
  vanished) keep the first finished copy.

The stage's output does not depend on who ran the items or in which order: every step's
results come back in item order. Items and functions cross process boundaries, so both must
pickle (module-level functions or ``functools.partial`` of them, plain data); workers must
see the same filesystem as the stage.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

RESULT = "result.json"

ItemFn = Callable[[Any, Path], Any]  # (item, out_dir) -> JSON-able result; files go into out_dir
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ShardWork:
    """One item of a step: the function, its input and the directory its output lands in."""

    fn: ItemFn
    item: Any
    directory: Path


class ShardMap(Protocol):
    def __call__(self, step: str, work: Sequence[ShardWork], progress: Progress) -> list[Any]:
        """Run every item of ``step`` through ``run_item``; results in item order."""


def run_item(work: ShardWork) -> Any:
    """The item's result: read back if an earlier run finished it, else computed and stored."""
    done = work.directory / RESULT
    if done.is_file():
        return json.loads(done.read_text())
    tmp = work.directory.with_name(f".tmp-{work.directory.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        text = json.dumps(work.fn(work.item, tmp))
        (tmp / RESULT).write_text(text)
        os.replace(tmp, work.directory)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done.is_file():  # not a twin that finished first: a real failure
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return json.loads(done.read_text())


def inline_map(step: str, work: Sequence[ShardWork], progress: Progress) -> list[Any]:
    """Every item in this process, in order."""
    results = []
    for done, item in enumerate(work, 1):
        results.append(run_item(item))
        progress(done, len(work))
    return results


def item_directory(scratch: Path, step: str, index: int) -> Path:
    return scratch / step / f"{index:05d}"
