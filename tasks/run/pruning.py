"""Pruning a sweep trial: its pre-training's evaluation points reported to its Optuna trial.

At every evaluation point the trial reports the configured figure (``val_loss`` by default)
and asks Optuna's median pruner whether it is worse than the median of earlier trials at the
same step. If it is, the stage stops there with ``optuna.TrialPruned`` and the sweep records
the trial PRUNED. The stage fails as any stopped stage does: nothing of it looks finished,
and its resumable checkpoint stays in the stage's scratch directory, so a later trial with
the same pre-training config continues from it rather than starting over.
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna
from optuna.trial import TrialState

from tasks.run.context import PruneLink
from tasks.sink import MetricSink


def median_pruner(link: PruneLink) -> optuna.pruners.MedianPruner:
    return optuna.pruners.MedianPruner(n_startup_trials=link.startup_trials, n_warmup_steps=link.warmup_steps)


def running_trial(link: PruneLink) -> optuna.Trial:
    """The live trial ``link`` names (the sweep asked it and waits for its pipeline run)."""
    study = optuna.load_study(study_name=link.study_name, storage=link.storage, pruner=median_pruner(link))
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == link.trial_number:
            return optuna.Trial(study, frozen._trial_id)
    raise RuntimeError(f"sweep study {link.study_name!r}: no running trial {link.trial_number} to report to")


class TrialReporter:
    """A stage sink that also reports ``link.metric`` to the trial and stops a hopeless one."""

    def __init__(self, sink: MetricSink, link: PruneLink) -> None:
        self.sink, self.link = sink, link
        self.trial = running_trial(link)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.sink.log_metrics(metrics, step)
        if self.link.metric not in metrics:
            return
        value = float(metrics[self.link.metric])
        self.trial.report(self.link.sign * value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"sweep trial {self.link.trial_number} pruned at step {step}: {self.link.metric} "
                f"{value:.4f} is worse than the median of the earlier trials at that step"
            )

    def progress(self, done: int, total: int) -> None:
        self.sink.progress(done, total)
