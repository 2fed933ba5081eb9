"""The data stages' items as Prefect tasks, on the task runner the user picked.

A data stage maps its steps through ``Job.map`` (``tasks.store.shard_map``); inside a flow
run the stage gets ``PrefectShardMap``, which submits every item as its own Prefect task
(``<step>-<index>``, retried on I/O errors) to the flow's task runner:

* ``local`` (the default): a thread pool in this process. The heavy parts of the data stages
  (NumPy, Arrow, the tokenizers library) release the GIL, so threads use the cores;
* ``dask``: ``prefect-dask``'s ``DaskTaskRunner`` on a ``distributed.LocalCluster`` of worker
  processes that it starts and stops with the data flow, or on an existing cluster
  (``dask://HOST:PORT``). Workers must see the workdir and the corpus at the same paths.

An item that finished is never run again for the same stage fingerprint (its result is in
the stage's scratch directory), so a retried or re-run item costs one shard, not the stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prefect import get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.run.config import TaskRunnerConfig
from tasks.run.prefect_io import retry_on_io
from tasks.store.shard_map import Progress, ShardWork, inline_map, run_item

shard_task = task(
    name="shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io
)(run_item)


def data_task_runner(cfg: TaskRunnerConfig) -> TaskRunner:
    """The task runner of the data flow, made inside the pipeline flow (it reads the API URL)."""
    if cfg.kind == "local":
        return ThreadPoolTaskRunner(max_workers=cfg.worker_count())
    from prefect_dask import DaskTaskRunner  # imported only when asked for: it loads distributed

    if cfg.address is not None:
        return DaskTaskRunner(address=cfg.address)
    cluster = {
        "n_workers": cfg.worker_count(),
        "threads_per_worker": 1,
        "processes": True,
        # the API URL, else each worker starts its own ephemeral server; a task run's INFO lines
        # ("Finished in state Completed()", per item) would flood the terminal
        "env": {"PREFECT_API_URL": _api_url(), "PREFECT_LOGGING_LEVEL": "WARNING"},
    }
    return DaskTaskRunner(cluster_kwargs=cluster)


def _api_url() -> str:
    with get_client(sync_client=True) as client:
        return str(client.api_url)


class QuietShards(logging.Filter):
    """Drops the INFO lines of item tasks (one per item, "Finished in state Completed()");
    their warnings and failures still show, and the stage's own lines report the progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "task_name", None) != shard_task.name


def quiet_shard_logs() -> None:
    """Install ``QuietShards`` on Prefect's task-run logger (the CLI does, once)."""
    logging.getLogger("prefect.task_runs").addFilter(QuietShards())
    logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster start/stop, per connection


class PrefectShardMap:
    """Each item a Prefect task on the current flow's task runner; inline outside a flow run."""

    def __call__(self, step: str, work: Sequence[ShardWork], progress: Progress) -> list[Any]:
        flow_run = FlowRunContext.get()
        if flow_run is None:
            return inline_map(step, work, progress)
        runner = flow_run.task_runner
        futures = [
            runner.submit(shard_task.with_options(task_run_name=f"{step}-{i}"), {"work": w})
            for i, w in enumerate(work)
        ]
        results = []
        for done, future in enumerate(futures, 1):
            results.append(future.result())
            progress(done, len(work))
        return results
