"""The Optuna study behind one sweep: where it is stored, and how a stopped sweep picks up.

The study lives in SQLite inside the workdir (or any SQLAlchemy URL, e.g. the PostgreSQL
server), named by the preset, overrides and search space, so the same command on the same
workdir continues the same study. A sweep holds the workdir's sweep lock while it runs;
trials that are RUNNING when the next sweep takes the lock were left by a killed process
and are run again under their own number and parameters. A trial that FAILED is asked
again with the same parameters. COMPLETE and PRUNED trials are never redone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler, GridSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from tasks.sweep.space import Param, SearchSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialPlan:
    """A trial to run: its Optuna number and the values of the space's dimensions."""

    number: int
    params: dict[str, Any]


def default_storage(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'sweep' / 'optuna.db').resolve()}"


class AskTellGridSampler(GridSampler):
    """Optuna's grid sampler without its end-of-grid ``study.stop()``, which only works inside
    ``study.optimize``: the sweep asks and tells, and counts COMPLETE trials itself."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: object) -> None:
        return None


def make_sampler(space: SearchSpace) -> BaseSampler:
    if space.sampler == "grid":
        return AskTellGridSampler(space.grid(), seed=space.seed)
    return TPESampler(seed=space.seed)


def open_study(space: SearchSpace, name: str, storage: str) -> optuna.Study:
    """Create the study, or load it when an earlier sweep started it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        study_name=name, storage=storage, sampler=make_sampler(space), direction=space.direction,
        load_if_exists=True,
    )  # fmt: skip


def complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def pruned(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))


def finished(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: COMPLETE ones and PRUNED ones (never redone)."""
    return len(complete(study)) + len(pruned(study))


def prune(study: optuna.Study, number: int) -> None:
    """Mark a trial PRUNED (its pre-training fell behind the median): it is not asked again."""
    study.tell(number, state=TrialState.PRUNED)


def fail(study: optuna.Study, number: int) -> None:
    """Mark a trial FAILED (its pipeline run raised): the next sweep asks its values again."""
    study.tell(number, state=TrialState.FAIL)


def suggest(trial: optuna.Trial, param: Param) -> object:
    """The trial's value of one dimension (sampled now, or the value it already has)."""
    if not param.is_range:
        return trial.suggest_categorical(param.path, param.values)
    if param.is_int:
        step = int(param.step or 1)
        return trial.suggest_int(param.path, int(param.low), int(param.high), step=step, log=param.log)  # type: ignore[arg-type]
    return trial.suggest_float(
        param.path, float(param.low), float(param.high), step=param.step, log=param.log
    )  # type: ignore[arg-type]


def left_over(study: optuna.Study, space: SearchSpace) -> list[TrialPlan]:
    """Trials a stopped sweep did not finish: RUNNING ones (killed) first, then failed ones to retry.

    Call only while holding the sweep lock: then no live process owns a RUNNING trial. A
    failed trial is retried once per set of parameters, and not when those parameters
    already completed in another trial.
    """
    done = {repr(sorted(t.params.items())) for t in complete(study)}
    plans, seen = [], set(done)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("sweep: trial %d was left running by a stopped sweep; running it again", frozen.number)
        trial = optuna.Trial(study, frozen._trial_id)  # a kill during ask() can leave dimensions unsampled
        params = {p.path: suggest(trial, p) for p in space.params}
        plans.append(TrialPlan(frozen.number, params))
        seen.add(repr(sorted(params.items())))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        key = repr(sorted(trial.params.items()))
        if key not in seen and trial.params:
            seen.add(key)
            study.enqueue_trial(dict(trial.params))
            log.warning("sweep: trial %d failed earlier; asking its parameters again", trial.number)
    return plans


def ask(study: optuna.Study, space: SearchSpace) -> TrialPlan:
    """A new trial with every dimension sampled (or an enqueued retry's fixed values)."""
    trial = study.ask()
    return TrialPlan(trial.number, {p.path: suggest(trial, p) for p in space.params})
