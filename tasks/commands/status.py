"""``bertflow status --workdir DIR``: what the last pipeline run in a workdir did, and what is registered.

The stages come from the run's record in the workdir (``tasks.run.run_record``), so they
show without the tracking server: each stage's outcome (ran / reused / failed / killed,
or interrupted when the process that ran it is gone), fingerprint, wall time, artifact
path and MLflow run. The registered versions and their aliases are read from the run's
tracking URI; when it does not answer, the stages are still shown and the registry line
says why it is missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.model_registry import VersionInfo, model_versions
from registry.tracking import Tracker
from tasks.procs import is_alive
from tasks.run.pipeline_run import format_table
from tasks.run.prefect_io import mlflow_run_url
from tasks.run.run_record import RUNNING, RUNS_DIR, last_record

INTERRUPTED = "interrupted"  # shown for a run or stage left running by a process that is gone


class NoRunError(ValueError):
    """The workdir holds no pipeline run record."""


@dataclass(frozen=True)
class WorkdirStatus:
    record: dict[str, Any]  # the last run's record, outcomes as shown (see ``shown_outcomes``)
    versions: list[VersionInfo]
    registry_error: str | None  # why the versions could not be read (None: they were)


def shown_outcomes(record: dict[str, Any]) -> dict[str, Any]:
    """``running`` becomes ``interrupted`` where the owning process is gone (a SIGKILL, a lost machine)."""
    owner = record.get("owner")
    if owner is None or is_alive(owner):
        return record
    stages = [s | {"outcome": INTERRUPTED} if s["outcome"] == RUNNING else s for s in record["stages"]]
    outcome = INTERRUPTED if record["outcome"] == RUNNING else record["outcome"]
    return record | {"stages": stages, "outcome": outcome}


def registered(record: dict[str, Any]) -> tuple[list[VersionInfo], str | None]:
    name, uri = record.get("model_name"), record.get("tracking_uri")
    if not name or not uri:
        return [], None
    tracker = Tracker(uri)
    try:
        tracker.check_reachable()
        return model_versions(tracker, name), None
    except Exception as exc:  # a server down or a store gone: the stages are still worth showing
        return [], str(exc)


def workdir_status(workdir: Path) -> WorkdirStatus:
    """The last run of ``workdir`` and the versions of the model it registers (raises NoRunError)."""
    workdir = workdir.resolve()
    record = last_record(workdir)
    if record is None:
        raise NoRunError(f"no pipeline run recorded in {workdir} (no {RUNS_DIR}/*.json); run one there first")
    versions, error = registered(record)
    return WorkdirStatus(shown_outcomes(record), versions, error)


def stage_rows(record: dict[str, Any]) -> list[dict[str, object]]:
    rows = []
    for s in record["stages"]:
        run_id = s.get("mlflow_run_id") or ""
        link = mlflow_run_url(record.get("tracking_uri", ""), record.get("experiment_id", ""), run_id)
        rows.append({
            "stage": s["name"],
            "outcome": s["outcome"],
            "seconds": "" if s.get("seconds") is None else f"{s['seconds']:.1f}",
            "fingerprint": s.get("fingerprint") or "",
            "mlflow run": link or run_id,
            "artifact": s.get("artifact_path") or "",
        })  # fmt: skip
    return rows


def when(unix: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix)) if unix else "?"


def status_lines(status: WorkdirStatus) -> list[str]:
    """The terminal report: the run, its stages as a table, errors of failed stages, the registry."""
    r = status.record
    ended = r.get("ended_unix")
    took = f", {ended - r['started_unix']:.1f} s" if ended and r.get("started_unix") else ""
    lines = [
        f"Last run in {r.get('workdir')}: preset {r.get('preset', '?')}, {r['outcome']}, "
        f"started {when(r.get('started_unix'))}{took}",
        f"MLflow: {r.get('tracking_uri', '?')} (experiment {r.get('experiment_id', '?')}, "
        f"parent run {r['run_id']})",
        "",
        format_table(stage_rows(r)) if r["stages"] else "(no stage started)",
    ]
    lines += [f"  {s['name']}: {s['error']}" for s in r["stages"] if s.get("error")]
    name = r.get("model_name")
    if not name:
        return [*lines, "", "Registry: this run registers no model"]
    lines += ["", f"Registered versions of {name} ({r.get('tracking_uri')}):"]
    if status.registry_error:
        return [*lines, f"  unavailable: {status.registry_error}"]
    if not status.versions:
        return [*lines, "  none"]
    for v in status.versions:
        aliases = " ".join(f"@{a}" for a in v.aliases) or "-"
        lines.append(f"  v{v.version}  {aliases}  run {v.run_id or '?'}  created {when(v.created_ms / 1000)}")
    return lines
