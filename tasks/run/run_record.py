"""The run record: what one pipeline run did, stage by stage, kept in its workdir for ``bertflow status``.

MLflow holds the same facts spread over a parent run and its children, possibly on a
server that is down or elsewhere; a failed stage never gets its fingerprint tagged there.
The record is one small JSON file per pipeline run, ``<workdir>/runs/<parent run id>.json``:
the run (preset, tracking URI, experiment, registered model name, owning process, start,
end, outcome) and each stage's outcome (``running`` -> ``ran`` / ``reused`` / ``failed`` /
``killed``), fingerprint, artifact path, MLflow run id, start and wall seconds. It is
rewritten atomically (a temporary file, then ``os.replace``) when the run starts, as each
stage starts and ends, and when the run ends, so a run killed with SIGKILL still says which
stages finished and which one was running (its owner's process is then gone).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.procs import identity
from tasks.store.locks import workdir_lock

RUNS_DIR = "runs"
RUNNING, RAN, REUSED, FAILED, KILLED, FINISHED = "running", "ran", "reused", "failed", "killed", "finished"


@dataclass
class StageEntry:
    """One stage run of a pipeline run (``name`` is its run name: ``finetune-pretrained``)."""

    name: str
    stage: str
    outcome: str = RUNNING
    started_unix: float = field(default_factory=time.time)
    seconds: float | None = None
    fingerprint: str | None = None
    artifact_path: str | None = None
    mlflow_run_id: str | None = None
    error: str | None = None

    def end(self, outcome: str, **found: Any) -> StageEntry:
        """This entry, ended now with ``outcome`` (and what became known: fingerprint, path, ...)."""
        for key, value in found.items():
            setattr(self, key, value)
        self.outcome, self.seconds = outcome, round(time.time() - self.started_unix, 3)
        return self


@dataclass(frozen=True)
class RunHeader:
    """What a pipeline run is, written when it starts."""

    run_id: str
    preset: str
    tracking_uri: str
    experiment_id: str
    model_name: str | None  # the registered model it registers (None: registration off)


def record_path(workdir: Path, run_id: str) -> Path:
    return workdir / RUNS_DIR / f"{run_id}.json"


def write_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


@contextmanager
def updating(workdir: Path, run_id: str) -> Iterator[dict[str, Any]]:
    """The record of ``run_id`` to change in place (a bare one if it has none); written back after."""
    path = record_path(workdir, run_id)
    with workdir_lock(workdir, f"run-record-{run_id}"):
        bare = {"run_id": run_id, "workdir": str(workdir), "started_unix": time.time(), "stages": []}
        record = read_record(path) or {**bare, "outcome": RUNNING}
        yield record
        write_atomically(path, record)


@contextmanager
def recorded_run(workdir: Path, header: RunHeader) -> Iterator[None]:
    """Record a pipeline run's start, then its end: finished, failed (exception) or killed (interrupt)."""
    with updating(workdir, header.run_id) as record:
        record.update(asdict(header))
        record |= {"owner": identity(), "started_unix": time.time(), "outcome": RUNNING, "stages": []}
    outcome = FAILED
    try:
        yield
        outcome = FINISHED
    except (KeyboardInterrupt, SystemExit):
        outcome = KILLED
        raise
    finally:
        with updating(workdir, header.run_id) as record:
            record |= {"outcome": outcome, "ended_unix": time.time()}


def record_stage(workdir: Path, run_id: str, entry: StageEntry) -> None:
    """Add or replace (a retried stage) the entry named ``entry.name`` in the run's record."""
    with updating(workdir, run_id) as record:
        stages = [s for s in record["stages"] if s["name"] != entry.name]
        record["stages"] = [*stages, asdict(entry)]


def last_record(workdir: Path) -> dict[str, Any] | None:
    """The record of the run that started last in ``workdir`` (None when no run recorded one)."""
    records = [r for p in (workdir / RUNS_DIR).glob("*.json") if (r := read_record(p)) is not None]
    return max(records, key=lambda r: r.get("started_unix", 0.0), default=None)
