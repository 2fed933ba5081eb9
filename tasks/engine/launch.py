"""Multi-process launch: run a training entry point under ``torchrun`` and relay rank 0's metrics.

The parent process (the Prefect task) cannot hand its metric sink to worker processes, so
rank 0 appends metrics to a JSON-lines file and the parent replays new lines into its sink
while it waits. SIGTERM to the parent is forwarded to torchrun (which forwards it to every
rank, where fit() checkpoints and exits); the parent then raises TrainingInterrupted too.
A SIGKILL cannot be forwarded, and torchrun starts every rank in a session of its own, so each
rank watches its launchers (``exit_when_orphaned``) and ends itself once they are gone: a
killed stage leaves no rank behind to write into the checkpoint its rerun resumes from.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.engine.signals import TrainingInterrupted, termination_signals
from tasks.sink import MetricSink

log = logging.getLogger(__name__)


@dataclass
class JsonlSink:
    """Metric sink that appends {"step", "metrics"} / {"done", "total"} lines to a file."""

    path: Path

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._write({"step": step, "metrics": {k: float(v) for k, v in metrics.items()}})

    def progress(self, done: int, total: int) -> None:
        self._write({"done": done, "total": total})

    def _write(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def relay(path: Path, offset: int, sink: MetricSink) -> int:
    """Replay complete lines written after ``offset`` into ``sink``; returns the new offset."""
    if not path.is_file():
        return offset
    with path.open() as handle:
        handle.seek(offset)
        for line in iter(handle.readline, ""):
            if not line.endswith("\n"):  # a line still being written: read it next time
                break
            offset += len(line.encode())
            record = json.loads(line)
            if "metrics" in record:
                sink.log_metrics(record["metrics"], record["step"])
            else:
                sink.progress(record["done"], record["total"])
    return offset


RENDEZVOUS_ENV = "PET_RDZV_ENDPOINT"  # torchrun reads each option from PET_<OPTION> when not given


def torchrun_command(
    module: str, args: Sequence[str], nproc: int, environ: Mapping[str, str] | None = None
) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m module args``.

    ``--standalone``: one node, a rendezvous on a free local port. When ``environ`` names a
    rendezvous (``PET_RDZV_ENDPOINT``), the flag is left out and torchrun takes the multi-node
    settings from the environment itself: ``PET_NNODES``, ``PET_RDZV_BACKEND``, ``PET_RDZV_ID``,
    ``PET_RDZV_ENDPOINT`` (README, "Multi-process and multi-node pre-training").
    """
    single_node = ["--standalone"] if not (environ or {}).get(RENDEZVOUS_ENV) else []
    return [
        sys.executable, "-m", "torch.distributed.run", *single_node, f"--nproc-per-node={nproc}",
        "-m", module, *args,
    ]  # fmt: skip


def run_torchrun(command: Sequence[str], metrics_file: Path, sink: MetricSink, poll_s: float = 1.0) -> None:
    """Run ``command``, relaying metrics until it exits; raise on failure or on SIGTERM."""
    process = subprocess.Popen(list(command))
    offset = 0
    try:
        with termination_signals() as received:
            while process.poll() is None:
                offset = relay(metrics_file, offset, sink)
                if received:
                    log.warning("forwarding SIGTERM to torchrun (pid %d)", process.pid)
                    process.terminate()
                    process.wait()
                    relay(metrics_file, offset, sink)
                    raise TrainingInterrupted(-1, received[0])
                time.sleep(poll_s)
    except BaseException:  # the sink raised (a pruned sweep trial, a tracking error): stop the ranks too
        if process.poll() is None:
            process.terminate()
            process.wait()
        raise
    relay(metrics_file, offset, sink)
    if process.returncode != 0:
        raise RuntimeError(f"torchrun exited with status {process.returncode}: {' '.join(command)}")


def exit_when_orphaned(launcher_pid: int | None, poll_s: float = 0.2) -> threading.Thread:
    """End this process (status 137, as SIGKILL would) once torchrun or ``launcher_pid`` is gone.

    torchrun is this process's parent: its death re-parents the rank. ``launcher_pid`` is the
    stage process that started torchrun on this node (None on the other nodes of a run).
    """
    agent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != agent or (launcher_pid is not None and not alive(launcher_pid)):
                log.error("the process that launched this rank is gone: exiting")
                os._exit(137)
            time.sleep(poll_s)

    thread = threading.Thread(target=watch, name="exit-when-orphaned", daemon=True)
    thread.start()
    return thread


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
