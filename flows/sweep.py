"""The ``sweep`` flow: a family of pipeline runs chosen by Optuna, compared, and the best one gated.

1. read the search space and check every dimension against the preset (before any trial)
2. open (or continue) the Optuna study and the sweep's MLflow parent run
3. run trials, up to ``parallel`` at once through Prefect's task runner; each is a pipeline
   run (a child of the parent run) that reuses every stage it shares with earlier trials,
   ranked on the selection split carved out of the training data; with a ``[pruning]``
   table, a trial whose pre-training falls behind the median at an evaluation point stops
   there and is recorded PRUNED
4. score the best trial once on the dev sets and send it through the registry's gate
5. publish the table and plots (files, MLflow, Prefect artifacts)
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from flows.pipeline import PipelineResult, pipeline
from tasks.run.config import load_config
from tasks.run.context import RunLink
from tasks.run.pipeline_run import resolve_tracking_uri
from tasks.store.artifact import Artifact
from tasks.sweep import study as studies
from tasks.sweep.publish import publish
from tasks.sweep.report import PrunedTrial, TrialOutcome
from tasks.sweep.session import PRUNED_TAG, TRIAL_TAG, supersede_trial_runs, sweep_session, tag_trial_runs
from tasks.sweep.space import SearchSpace, SpaceError, check_space, read_space, resolve_space
from tasks.sweep.trials import (
    final_updates,
    objective,
    pretrain_flops,
    prune_link,
    prune_sign,
    study_name,
    trial_updates,
)

log = logging.getLogger(__name__)


class SweepResult(BaseModel):
    study_name: str
    storage: str
    parent_run_id: str
    tracking_uri: str
    trials: int
    pruned_trials: list[int]
    best_trial: int
    best_params: dict[str, object]
    best_selection_value: float
    metric: str
    dev_scores: list[dict[str, object]]
    registration: Artifact | None
    table_markdown: str
    files: list[str]


@task(name="sweep-trial")
def trial_task(
    config_updates: dict, preset: str, overrides: list[str], workdir: str, link: RunLink
) -> PipelineResult:
    """One trial: the pipeline on the preset with the trial's values (its stages reused where they can)."""
    config = load_config(preset, Path(workdir), overrides, updates=config_updates)
    return pipeline(config=config, workdir=workdir, link=link)


@flow(name="sweep")
def sweep(
    preset: str,
    space_file: str,
    trials: int,
    workdir: str,
    parallel: int = 1,
    storage: str | None = None,
    overrides: list[str] | None = None,
) -> SweepResult:
    """Run ``trials`` trials of the search space in ``space_file`` on ``preset`` (see the module doc)."""
    root, overrides = Path(workdir).resolve(), list(overrides or [])
    space = read_space(resolve_space(space_file))
    base = check_space(space, preset, root, overrides)
    if space.sampler == "grid" and trials > space.grid_size():
        raise SpaceError(
            f"{space_file}: the grid has {space.grid_size()} points, fewer than --trials {trials}"
        )
    name = study_name(preset, base, overrides, space)
    url = storage or studies.default_storage(root)
    study = studies.open_study(space, name, url)
    uri = resolve_tracking_uri(base, root)
    params = {
        "preset": preset,
        "space": space.identity(),
        "trials": trials,
        "parallel": parallel,
        "storage": url,
    }
    with sweep_session(study, root, uri, base.tracking.experiment, f"sweep-{preset}", params) as run:
        pending = studies.left_over(study, space)
        supersede_trial_runs(run, [plan.number for plan in pending])
        while (left := trials - studies.finished(study)) > 0:
            batch = pending[: min(parallel, left)]
            pending = pending[len(batch) :]
            batch += [studies.ask(study, space) for _ in range(min(parallel, left) - len(batch))]
            futures = [
                trial_task.submit(
                    trial_updates(space, plan.params), preset, overrides, str(root),
                    RunLink(parent_run_id=run.run_id, name=f"trial-{plan.number}",
                            tags={TRIAL_TAG: str(plan.number)},
                            pruning=prune_link(space, name, url, plan.number)),
                )
                for plan in batch
            ]  # fmt: skip
            for plan, future in zip(batch, futures, strict=True):
                try:
                    result = future.result()
                    value = objective(result.summaries["pretrained"], space.metric)
                except optuna.TrialPruned as exc:
                    log.info("%s", exc)
                    studies.prune(study, plan.number)
                    tag_trial_runs(run, [plan.number], {PRUNED_TAG: str(exc)})
                    continue
                except BaseException:
                    studies.fail(study, plan.number)
                    raise
                # recorded before the value, so every COMPLETE trial has its run and its cost
                flops = pretrain_flops(result.pretrain_summary)
                study.set_user_attr(
                    f"trial-{plan.number}", {"run_id": result.parent_run_id, "pretrain_flops": flops}
                )
                study.tell(plan.number, value)
        outcomes = [
            TrialOutcome(t.number, dict(t.params), float(t.value), **_trial_attrs(study, t.number))
            for t in studies.complete(study)
        ]
        if not outcomes:
            raise RuntimeError(
                f"sweep {name}: every trial was pruned, so none has a selection score to rank; "
                "raise [pruning] startup_trials so the first trials always run to the end"
            )
        best = study.best_trial
        final_config = load_config(preset, root, overrides, updates=final_updates(space, best.params))
        final = pipeline(
            config=final_config, workdir=str(root),
            link=RunLink(parent_run_id=run.run_id, name=f"best-trial-{best.number}-dev",
                         tags={"bertflow.sweep.best_trial": str(best.number)}),
        )  # fmt: skip
        stopped = [_pruned(t, space) for t in studies.pruned(study)]
        published = publish(space, outcomes, best.number, final, run, root / "sweep" / name, stopped)
    return SweepResult(
        study_name=name, storage=url, parent_run_id=run.run_id, tracking_uri=uri, trials=len(outcomes),
        pruned_trials=[t.number for t in stopped],
        best_trial=best.number, best_params=dict(best.params), best_selection_value=float(best.value),
        metric=space.metric, dev_scores=final.scores, registration=final.registration,
        table_markdown=published.markdown, files=[str(p) for p in published.files],
    )  # fmt: skip


def _pruned(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> PrunedTrial:
    """A PRUNED trial's last reported step and its figure there (the report's sign undone)."""
    step = trial.last_step if trial.last_step is not None else 0
    metric = space.pruning.metric if space.pruning else ""
    value = prune_sign(space) * trial.intermediate_values.get(step, float("nan"))
    return PrunedTrial(trial.number, dict(trial.params), step, metric, value)


def _trial_attrs(study: studies.optuna.Study, number: int) -> dict[str, object]:
    attrs = study.user_attrs[f"trial-{number}"]
    return {"run_id": attrs["run_id"], "pretrain_flops": float(attrs["pretrain_flops"])}


def sweep_with_runner(parallel: int):
    """The sweep flow with a thread-pool task runner of ``parallel`` workers (trials run side by side)."""
    return sweep.with_options(task_runner=ThreadPoolTaskRunner(max_workers=max(1, parallel)))
