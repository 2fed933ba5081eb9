"""The sweep's MLflow parent run: every trial's pipeline run and the best trial's dev run hang under it.

A resumed sweep continues the SAME parent run (its id is kept in the Optuna study), so a
killed and restarted sweep still shows one parent with one child per trial. While a sweep
runs it holds the workdir's sweep lock: a second sweep on the same workdir waits, and a
RUNNING trial found after taking the lock belongs to a process that is gone.

Such a trial is run again, and the run a killed sweep had made for it (possibly FINISHED,
when the kill came between the pipeline's end and the study's record of its value) is
tagged superseded, so the parent shows exactly one live run per trial number.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna

from registry.lifecycle import OWNER_TAG, WORKDIR_TAG, ended_with_outcome
from registry.tracking import Tracker
from tasks.procs import identity
from tasks.store.locks import workdir_lock

RUN_ATTR = "mlflow_parent_run_id"
TRIAL_TAG = "bertflow.sweep.trial"
SUPERSEDED_TAG = "bertflow.sweep.superseded"
PRUNED_TAG = "bertflow.sweep.pruned"  # its value says at which step and why


@dataclass(frozen=True)
class SweepRun:
    tracking_uri: str
    experiment_id: str
    run_id: str


def _parent_run(tracker: Tracker, study: optuna.Study, experiment_id: str, name: str, tags: dict) -> str:
    """The study's parent run, reopened; a new one for a new study (or if it was deleted)."""
    previous = study.user_attrs.get(RUN_ATTR)
    if previous:
        try:
            tracker.client.update_run(previous, status="RUNNING")
            tracker.set_tags(previous, tags)
            return previous
        except Exception as exc:  # deleted or on another server: say so, start a new parent
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
    run_id = tracker.start_run(experiment_id, name, tags=tags)
    study.set_user_attr(RUN_ATTR, run_id)
    return run_id


@contextmanager
def sweep_session(
    study: optuna.Study, workdir: Path, tracking_uri: str, experiment: str, name: str, params: dict
) -> Iterator[SweepRun]:
    """Hold the sweep lock; yield the parent run, ended FINISHED / FAILED / KILLED with the body."""
    with workdir_lock(workdir, f"sweep-{study.study_name}"):
        tracker = Tracker(tracking_uri)
        tracker.check_reachable()
        artifact_root = workdir / "mlartifacts" if tracking_uri.startswith("sqlite:") else None
        with workdir_lock(workdir, "tracking-setup"):
            experiment_id = tracker.experiment(experiment, artifact_root)
        tags = {"bertflow.sweep": study.study_name, WORKDIR_TAG: str(workdir), OWNER_TAG: identity()}
        run_id = _parent_run(tracker, study, experiment_id, name, tags)
        with ended_with_outcome(tracker, run_id):
            tracker.log_params(run_id, params)
            yield SweepRun(tracking_uri, experiment_id, run_id)


def tag_trial_runs(sweep_run: SweepRun, numbers: Collection[int], tags: dict[str, str]) -> list[str]:
    """Set ``tags`` on the parent's live (not superseded) runs of the trials ``numbers``; the ids tagged.

    One search over the parent's children for all of them.
    """
    if not numbers:
        return []
    tracker = Tracker(sweep_run.tracking_uri)
    children = tracker.client.search_runs(
        [sweep_run.experiment_id], f"tags.mlflow.parentRunId = '{sweep_run.run_id}'"
    )
    wanted = {str(n) for n in numbers}
    ids = [
        r.info.run_id
        for r in children
        if r.data.tags.get(TRIAL_TAG) in wanted and SUPERSEDED_TAG not in r.data.tags
    ]
    for run_id in ids:
        tracker.set_tags(run_id, tags)
    return ids


def supersede_trial_runs(sweep_run: SweepRun, numbers: Collection[int]) -> list[str]:
    """Tag the parent's earlier runs of the trials ``numbers`` superseded; the ids tagged.

    The runs are kept, not deleted: stages the rerun reuses name them as their lineage.
    """
    reason = "the sweep was stopped before recording this trial; it ran again"
    return tag_trial_runs(sweep_run, numbers, {SUPERSEDED_TAG: reason})
