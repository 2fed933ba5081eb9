"""The one MLflow run lifecycle: start, run the body, end FINISHED / FAILED / KILLED.

Stages, the pipeline's parent run and ``bertflow compare`` all open their runs through
``tracked_run``, so no run is ever left RUNNING by an exception or a SIGTERM. A process
killed with SIGKILL (or whose tracking server went away) cannot close its runs; every run
is therefore tagged with the workdir it works on and the process that owns it, and the
next pipeline run on that workdir closes the orphans (``close_orphans``) as KILLED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from registry.tracking import Tracker

log = logging.getLogger(__name__)

WORKDIR_TAG = "bertflow.workdir"
OWNER_TAG = "bertflow.owner"  # host:pid:start-time of the process that opened the run


@contextmanager
def tracked_run(
    tracker: Tracker,
    experiment_id: str,
    name: str,
    *,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Yield a new run's id; end it FINISHED, FAILED (exception) or KILLED (interrupt / SystemExit)."""
    run_id = tracker.start_run(experiment_id, name, parent_run_id=parent_run_id, tags=tags)
    with ended_with_outcome(tracker, run_id):
        yield run_id


@contextmanager
def ended_with_outcome(tracker: Tracker, run_id: str) -> Iterator[str]:
    """End an open run FINISHED, FAILED (exception) or KILLED (interrupt / SystemExit) as the body ends.

    If ending the run fails while the body's own error propagates, the body's error wins
    (it says what went wrong first) and the failure to end the run is logged.
    """
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        end_quietly_if_failing(tracker, run_id, status)


def end_quietly_if_failing(tracker: Tracker, run_id: str, status: str) -> None:
    try:
        tracker.end_run(run_id, status)
    except Exception:
        if status == "FINISHED":
            raise
        log.exception("could not mark MLflow run %s %s at %s", run_id, status, tracker.tracking_uri)


def close_orphans(
    tracker: Tracker, experiment_id: str, workdir: str, owner_alive: Callable[[str], bool]
) -> list[str]:
    """Mark KILLED every RUNNING run of ``workdir`` whose owning process is gone; returns their ids."""
    runs = tracker.client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{WORKDIR_TAG}` = '{workdir}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    closed = []
    for run in runs:
        owner = run.data.tags.get(OWNER_TAG, "")
        if owner and owner_alive(owner):
            continue
        tracker.set_tags(run.info.run_id, {"bertflow.closed_as_orphan": f"owner {owner or '?'} is gone"})
        tracker.end_run(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    if closed:
        log.warning("closed %d MLflow run(s) left RUNNING by a killed process: %s", len(closed), closed)
    return closed
