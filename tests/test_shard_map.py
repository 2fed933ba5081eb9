"""Shard-mapped steps: cached per item, and a stage's output independent of who ran its items."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.data.dedup import DedupConfig, dedup
from tasks.data.ingest import IngestConfig, ingest
from tasks.sink import MemorySink
from tasks.store.artifact import Artifact
from tasks.store.shard_map import RESULT, ShardWork, run_item
from tasks.store.stage import SCRATCH_DIR

VOCAB = [f"w{i}" for i in range(3000)]


def _square(item: int, out: Path) -> dict:
    (out / "value.txt").write_text(str(item * item))
    return {"square": item * item}


def test_run_item_stores_its_result_and_never_runs_twice(tmp_path: Path) -> None:
    work = ShardWork(_square, 7, tmp_path / "step" / "00000")
    assert run_item(work) == {"square": 49}
    assert (work.directory / "value.txt").read_text() == "49" and (work.directory / RESULT).is_file()
    (work.directory / "value.txt").write_text("kept")  # a second call reads the stored result back
    assert run_item(work) == {"square": 49} and (work.directory / "value.txt").read_text() == "kept"


def _fails(item: int, out: Path) -> dict:
    (out / "partial").write_text("half")
    raise RuntimeError(f"item {item} failed")


def test_failed_item_leaves_nothing_that_looks_finished(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="item 3 failed"):
        run_item(ShardWork(_fails, 3, tmp_path / "step" / "00003"))
    assert list((tmp_path / "step").iterdir()) == []


class ReversedProcesses:
    """A shard map that runs items in two spawned processes, submitted last item first."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def __call__(self, step: str, work: Sequence[ShardWork], progress: Any) -> list[Any]:
        self.steps.append(step)
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_item, w) for w in reversed(work)]
            return [f.result() for f in reversed(futures)]


class StopAfter:
    """Runs items inline until ``limit`` of them finished, then raises as a killed run would."""

    def __init__(self, limit: int) -> None:
        self.limit, self.ran = limit, 0

    def __call__(self, step: str, work: Sequence[ShardWork], progress: Any) -> list[Any]:
        results = []
        for w in work:
            if self.ran == self.limit:
                raise KeyboardInterrupt
            fresh = not (w.directory / RESULT).is_file()
            results.append(run_item(w))
            self.ran += fresh
        return results


def corpus(tmp_path: Path) -> Path:
    """40 documents in one file, 8 of them near and 3 exact copies of others, spread over shards."""
    rng = np.random.default_rng(5)
    originals = [[str(w) for w in rng.choice(VOCAB, 150)] for _ in range(29)]
    texts = [" ".join(w) for w in originals]
    for k in range(8):  # one word edited in 150: J ~ 0.94, partners far apart in the corpus
        edited = list(originals[k * 3])
        edited[70] = "edited"
        texts.insert(4 + k * 4, " ".join(edited))
    texts += [texts[2].upper(), texts[20], texts[33]]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def docs_of(tmp_path: Path, workdir: Path) -> Artifact:
    cfg = IngestConfig(paths=(str(corpus(tmp_path)),), min_chars=1, min_alpha_fraction=0.0, shard_docs=6)
    return ingest(cfg, workdir=workdir, sink=MemorySink())


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("docs-*.parquet"))}


def test_dedup_output_is_the_same_bytes_whoever_runs_its_items(tmp_path: Path) -> None:
    cfg = DedupConfig(batch_docs=4)
    inline = dedup(cfg, docs_of(tmp_path, tmp_path / "a"), workdir=tmp_path / "a", sink=MemorySink())
    mapper = ReversedProcesses()
    docs = docs_of(tmp_path, tmp_path / "b")
    pooled = dedup(cfg, docs, workdir=tmp_path / "b", sink=MemorySink(), shard_map=mapper)
    steps = ["sign", "exact", "bands", "estimate", "shingles", "verify", "filter"]
    assert mapper.steps == [f"dedup-{step}" for step in steps]
    assert inline.summary == pooled.summary
    assert inline.summary["dropped_exact"] == 3 and inline.summary["dropped_near"] == 8
    assert inline.file("dropped.jsonl").read_text() == pooled.file("dropped.jsonl").read_text()
    assert shard_bytes(inline.dir) == shard_bytes(pooled.dir) and len(shard_bytes(inline.dir)) == 7
    ids = [json.loads(line)["id"] for line in inline.file("dropped.jsonl").read_text().splitlines()]
    assert ids == sorted(ids, key=lambda i: int(i.split(":")[1]))  # in corpus order


def test_killed_dedup_reruns_only_unfinished_items(tmp_path: Path) -> None:
    docs = docs_of(tmp_path, tmp_path / "w")
    killed = StopAfter(limit=5)  # 7 sign items: the kill comes inside the first step
    with pytest.raises(KeyboardInterrupt):
        dedup(DedupConfig(), docs, workdir=tmp_path / "w", sink=MemorySink(), shard_map=killed)
    assert len(list((tmp_path / "w" / SCRATCH_DIR).glob("dedup-*/dedup-sign/*/result.json"))) == 5
    resumed = StopAfter(limit=10_000)
    art = dedup(DedupConfig(), docs, workdir=tmp_path / "w", sink=MemorySink(), shard_map=resumed)
    counted = StopAfter(limit=10_000)
    reference = dedup(
        DedupConfig(), docs_of(tmp_path, tmp_path / "r"), workdir=tmp_path / "r", shard_map=counted
    )
    assert art.summary == reference.summary
    assert shard_bytes(art.dir) == shard_bytes(reference.dir)
    assert counted.ran > 7 + art.summary["bands"] and resumed.ran == counted.ran - 5
    assert not (tmp_path / "w" / SCRATCH_DIR).exists() or not any((tmp_path / "w" / SCRATCH_DIR).iterdir())
