"""The data flow's shards on a 2-worker Dask LocalCluster give the bytes the local runner gives."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import DataArtifacts, data_pipeline
from tasks.run.config import TaskRunnerConfig, load_config, parse_task_runner
from tasks.run.shard_tasks import PrefectShardMap, QuietShards
from tasks.store.artifact import Artifact
from tasks.store.shard_map import ItemFn, Progress, ShardWork

pytestmark = pytest.mark.slow

SMALL = [
    "demo.n_corpus_docs=2400",  # two corpus files of the generator
    "demo.n_train=40",
    "demo.n_dev=20",
    "ingest.shard_docs=128",  # several shards per file group
    "ingest.group_bytes=1",  # one file group per file
    "tokenizer.vocab_size=512",
]


def _die_once(marker: str, fn: ItemFn, item: Any, out: Path) -> Any:
    """The worker process running this item dies, once, as it would on a lost machine."""
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return fn(item, out)


class LosesAWorker(PrefectShardMap):
    """The pipeline's shard map, but the worker of one LSH band item dies the first time."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, step: str, work: Sequence[ShardWork], progress: Progress) -> list[Any]:
        if step == "dedup-bands":
            doomed = ShardWork(
                partial(_die_once, str(self.marker), work[3].fn), work[3].item, work[3].directory
            )
            work = [*work[:3], doomed, *work[4:]]
        return super().__call__(step, work, progress)


def run_data(workdir: Path, runner: str) -> tuple[DataArtifacts, Artifact]:
    config = load_config("tiny", workdir, [*SMALL, f'task_runner.kind="{runner}"', "task_runner.workers=2"])
    data = data_pipeline(config, str(workdir))
    dedup_dir = next((workdir / "dedup").iterdir())
    return data, Artifact(stage="dedup", fingerprint=dedup_dir.name, path=str(dedup_dir))


def test_dask_and_local_runners_write_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local, local_dedup = run_data(tmp_path / "local", "local")
    marker = tmp_path / "a-worker-died"
    monkeypatch.setattr("tasks.run.contract.PrefectShardMap", lambda: LosesAWorker(marker))
    dask, dask_dedup = run_data(tmp_path / "dask", "dask")
    assert marker.exists()  # a Dask worker process died inside an item; the cluster re-ran that item
    for name in ("train.bin", "validation.bin", "pack.json"):
        assert local.packed.file(name).read_bytes() == dask.packed.file(name).read_bytes(), name
    dropped = local_dedup.file("dropped.jsonl").read_text()
    assert dropped == dask_dedup.file("dropped.jsonl").read_text()
    reasons = {json.loads(line)["reason"] for line in dropped.splitlines()}
    assert reasons == {"exact", "near"}  # the demo's planted duplicates, found by both
    ingest_dir = next((tmp_path / "local" / "ingest").iterdir())
    assert len(list(ingest_dir.glob("docs-*.parquet"))) >= 4
    assert json.loads((ingest_dir / "manifest.json").read_text())["summary"]["groups"] >= 2


def test_task_runner_flag_and_config_errors() -> None:
    assert parse_task_runner("local") == TaskRunnerConfig()
    assert parse_task_runner("dask", 3) == TaskRunnerConfig(kind="dask", workers=3)
    assert parse_task_runner("dask://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    with pytest.raises(ValueError, match=r"--task-runner 'ray': expected local, dask or dask://HOST:PORT"):
        parse_task_runner("ray")
    with pytest.raises(ValueError, match="address needs kind = 'dask'"):
        TaskRunnerConfig(address="tcp://h:1")
    with pytest.raises(ValueError, match="an existing one has its own"):
        TaskRunnerConfig(kind="dask", address="tcp://h:1", workers=2)


def test_item_task_info_lines_are_dropped_but_their_failures_kept() -> None:
    quiet = QuietShards()

    def record(level: int, task_name: str) -> logging.LogRecord:
        rec = logging.LogRecord(
            "prefect.task_runs", level, __file__, 1, "Finished in state Completed()", (), None
        )
        rec.task_name = task_name
        return rec

    assert not quiet.filter(record(logging.INFO, "shard"))
    assert quiet.filter(record(logging.ERROR, "shard"))
    assert quiet.filter(record(logging.INFO, "ingest"))  # a stage's own task keeps its lines
