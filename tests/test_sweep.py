"""`bertflow sweep`: the space is checked before any trial, trials reuse shared stages, a killed
sweep resumes without redoing finished trials, and the selection split never leaks into training.

The end-to-end test runs a real ``bertflow sweep`` process on the shrunken tiny preset with a
6-point fine-tuning-only grid, two trials at a time, SIGKILLs it once three trials are
COMPLETE in the Optuna store, runs the same command again, and checks what it left: six
COMPLETE trials whose first three were not run again, one pre-training for all of them, one
MLflow parent with a child per trial plus the best trial's dev run, the table and plots there
and in the workdir, and a registered model.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tasks.downstream.features import read_examples
from tasks.downstream.selection import SelectionSplit, SelectionSplitError, selection_indices, split_examples
from tasks.downstream.tasks import get_task
from tasks.run.config import load_config
from tasks.sweep.session import SUPERSEDED_TAG, TRIAL_TAG, SweepRun, supersede_trial_runs
from tasks.sweep.space import SpaceError, check_space, grid_points, read_space

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "demo.n_corpus_docs=600", "demo.n_train=80", "demo.n_dev=40", "tokenizer.vocab_size=512",
    "pretrain.train.max_steps=10", "pretrain.train.eval_every=10", "pretrain.eval_batches=2",
    "finetune.train.max_steps=4", "evaluate.max_examples_per_task=12",
    "registry.model_name=sweep-test",
]  # fmt: skip
GRID = """\
[sweep]
metric = "glue_avg"
sampler = "grid"
selection_size = 20

[params]
"finetune.train.lr" = [1e-4, 3e-4, 1e-3]
finetune.batch_size = {choice = [4, 8]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def checked(tmp_path: Path, text: str) -> None:
    check_space(read_space(write(tmp_path, text)), "tiny", tmp_path, FAST)


def test_grid_space_reads_and_lists_every_point(tmp_path: Path) -> None:
    space = read_space(write(tmp_path, GRID))
    assert [p.path for p in space.params] == ["finetune.train.lr", "finetune.batch_size"]
    assert space.grid_size() == 6 and len(grid_points(space)) == 6
    assert space.selection == SelectionSplit(size=20, seed=0)
    check_space(space, "tiny", tmp_path, FAST)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            '"finetune.train.lrr" = [1e-4, 2e-4]',
            "params.finetune.train.lrr (line 3): value 0.0001 is rejected",
        ),
        ('"pretrain.train.lr" = {range = [1e-3, 1e-3]}', "an empty range [0.001, 0.001]"),
        ('"finetune.train.lr" = []', "an empty list of values"),
        ('"finetune.batch_size" = [32]', "every value equals the preset's: this dimension changes nothing"),
        ('"finetune.batch_size" = [0, 8]', "value 0 is rejected"),
        ('"finetune.train.max_steps" = [4, 8]', "also set by --set finetune.train.max_steps=..."),
        ('"finetune.hold_out.size" = [5, 10]', "set by the sweep itself"),
        ('"finetune.train.lr" = {range = [1e-4, 1e-3]}', "the grid sampler needs a list of values"),
        ('"finetune.train.lr" = {log_range = [0, 1e-3]}', "a log_range needs low > 0"),
    ],
)
def test_bad_space_is_refused_naming_file_key_and_line(tmp_path: Path, params: str, message: str) -> None:
    text = f'[params]\n\n{params}\n\n[sweep]\nsampler = "grid"\n'  # the parameter on line 3
    with pytest.raises(SpaceError) as err:
        checked(tmp_path, text)
    assert str(tmp_path / "space.toml") in str(err.value) and message in str(err.value)


def test_unknown_metric_and_empty_space_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"sweep\.metric 'CoLA/mcc' is not reported"):
        checked(tmp_path, GRID.replace('metric = "glue_avg"', 'metric = "CoLA/mcc"'))
    with pytest.raises(SpaceError, match=r"\[params\] is empty"):
        checked(tmp_path, '[sweep]\nmetric = "glue_avg"\n')
    with pytest.raises(SpaceError, match="invalid TOML"):
        checked(tmp_path, "[params\n")


def test_selection_split_is_seeded_disjoint_and_refuses_to_eat_the_train_set() -> None:
    split = SelectionSplit(size=25, seed=3)
    items = list(range(100))
    kept, held = split_examples(items, "SST-2", split)
    assert sorted(kept + held) == items and not set(kept) & set(held) and len(held) == 25
    assert held == split_examples(items, "SST-2", split)[1]  # the same slice every time
    assert held != split_examples(items, "MRPC", split)[1]  # tasks draw apart
    assert held != split_examples(items, "SST-2", SelectionSplit(size=25, seed=4))[1]
    with pytest.raises(SelectionSplitError, match="SST-2: holding out 26 of 100"):
        selection_indices(100, "SST-2", SelectionSplit(size=26))


def test_finetuning_never_sees_what_selection_scores(tmp_path: Path) -> None:
    """The fine-tuning reader and the scoring reader split one train file into two disjoint parts."""
    from tasks.demo.stage import make_demo_data
    from tasks.downstream.scoring import scored_examples
    from tasks.train.finetune import training_examples

    split = {"size": 20, "seed": 1}
    cfg = load_config(
        "tiny", tmp_path, FAST,
        updates={"finetune.hold_out": split, "evaluate.split": "selection", "evaluate.selection": split},
    )  # fmt: skip
    make_demo_data(cfg.demo, workdir=tmp_path)
    for name in cfg.finetune.tasks:
        spec = get_task(name)
        everything = read_examples(cfg.finetune.data_dir, spec, spec.train_file)
        trained = training_examples(cfg.finetune, spec, 0)
        ((_, scored),) = scored_examples(
            cfg.evaluate.model_copy(update={"max_examples_per_task": None}), spec
        )
        assert len(trained) + len(scored) == len(everything) and len(scored) == 20
        assert not {repr(e) for e in trained} & {repr(e) for e in scored}


def completed(storage: Path) -> int:
    if not storage.is_file():
        return 0
    with sqlite3.connect(storage) as db:
        try:
            return db.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def launch(
    workdir: Path, space: Path, trials: int = 6, parallel: int = 2, overrides: list[str] = FAST
) -> subprocess.Popen:
    sets = [f"--set={o}" for o in overrides]
    command = [sys.executable, "-m", "flows.cli", "sweep", "--preset", "tiny", "--space", str(space),
               "--trials", str(trials), "--parallel", str(parallel), "--workdir", str(workdir),
               *sets]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


@pytest.mark.slow
def test_sweep_runs_six_trials_pretrains_once_and_resumes_after_sigkill(tmp_path: Path) -> None:
    workdir, space = tmp_path / "w", write(tmp_path, GRID)
    storage = workdir / "sweep" / "optuna.db"
    proc = launch(workdir, space)
    deadline = time.monotonic() + 400
    while completed(storage) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{storage}")
    before = {t.number: (t.params, t.value) for t in study.trials if t.state.name == "COMPLETE"}
    assert len(before) >= 3

    proc = launch(workdir, space)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{storage}")
    done = {t.number: (t.params, t.value) for t in study.trials if t.state.name == "COMPLETE"}
    assert len(done) == 6 and all(done[n] == before[n] for n in before)  # finished trials kept as they were
    assert sorted(json.dumps(p, sort_keys=True) for p, _ in done.values()) == sorted(
        json.dumps(p, sort_keys=True) for p in grid_points(read_space(space))
    )  # every grid point once
    assert not [t for t in study.trials if t.state.name == "RUNNING"]

    pretrained = [d for d in (workdir / "pretrain").iterdir() if (d / "manifest.json").is_file()]
    assert len(pretrained) == 1  # one pre-training shared by every trial and the final run

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("bertflow").experiment_id], "tags.`bertflow.sweep` != ''"
    )
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    live = [r for r in children if TRIAL_TAG in r.data.tags and SUPERSEDED_TAG not in r.data.tags]
    assert all(r.info.status == "FINISHED" for r in live)
    assert sorted(int(r.data.tags[TRIAL_TAG]) for r in live) == sorted(done)  # one live run per trial
    for number in before:  # a finished trial was not run again after the kill
        assert sum(r.data.tags.get(TRIAL_TAG) == str(number) for r in children) == 1
    superseded = [r for r in children if SUPERSEDED_TAG in r.data.tags]
    assert not {int(r.data.tags[TRIAL_TAG]) for r in superseded} & set(before)  # only killed trials
    assert any("bertflow.sweep.best_trial" in r.data.tags for r in children)
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/parallel_coordinates.png", "sweep/metric_vs_budget.png", "sweep/trials.md"} <= logged
    assert "best_selection/glue_avg" in parent.data.metrics and "best_dev/glue_avg" in parent.data.metrics
    assert client.search_model_versions("name = 'sweep-test'")
    assert "Best trial" in out


def test_a_killed_sweeps_run_of_a_trial_is_superseded_not_counted(tmp_path: Path) -> None:
    """The kill can land after a trial's pipeline run FINISHED but before the study recorded
    its value: the rerun must leave one live run for that trial number, not two."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("bertflow", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, run_name="sweep").info.run_id

    def child(number: int, status: str) -> str:
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, TRIAL_TAG: str(number)})
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    kept, killed_after_finish, killed_during = child(2, "FINISHED"), child(3, "FINISHED"), child(3, "KILLED")
    other_parent = client.create_run(experiment, tags={TRIAL_TAG: "3"}).info.run_id
    sweep_run = SweepRun(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment, parent)
    assert sorted(supersede_trial_runs(sweep_run, [3])) == sorted([killed_after_finish, killed_during])
    assert supersede_trial_runs(sweep_run, [3]) == []  # already tagged: nothing new
    expected = {kept: False, killed_after_finish: True, killed_during: True, other_parent: False}
    for run_id, tagged in expected.items():
        assert (SUPERSEDED_TAG in client.get_run(run_id).data.tags) is tagged


def test_tpe_space_samples_inside_its_ranges_and_resumes_the_same_study(tmp_path: Path) -> None:
    from tasks.sweep import study as studies

    space = read_space(write(tmp_path, TPE))
    storage = studies.default_storage(tmp_path)
    first = studies.open_study(space, "s", storage)
    plans = [studies.ask(first, space) for _ in range(3)]
    for plan in plans:
        assert 1e-5 <= plan.params["finetune.train.lr"] <= 1e-3
        assert plan.params["finetune.train.max_steps"] in range(10, 41, 10)
        assert plan.params["finetune.mixing"] in ("proportional", "equal")
    first.tell(plans[0].number, 40.0)
    again = studies.open_study(space, "s", storage)  # a new process on the same storage: the same study
    left = studies.left_over(again, space)  # the two asked but never told are RUNNING: run again
    assert [p.number for p in left] == [1, 2] and [p.params for p in left] == [p.params for p in plans[1:]]
    assert [t.value for t in studies.complete(again)] == [40.0]


TPE = """\
[sweep]
sampler = "tpe"
seed = 3

[params]
"finetune.train.lr" = {log_range = [1e-5, 1e-3]}
"finetune.train.max_steps" = {range = [10, 40], step = 10}
"finetune.mixing" = ["proportional", "equal"]
"""


PRUNING = """\
[sweep]
metric = "glue_avg"
sampler = "grid"
seed = {seed}
selection_size = 20

[params]
"pretrain.train.lr" = [2e-3, 1e-7]

[pruning]
metric = "val_loss"
startup_trials = 1
"""


@pytest.mark.parametrize(
    ("pruning", "message"),
    [
        ('metric = "val_mlm_accuracy"', "prune on one of"),
        ("patience = 3", "unknown key"),
        ("startup_trials = -1", "startup_trials must be an integer >= 0"),
    ],
)
def test_bad_pruning_table_is_refused(tmp_path: Path, pruning: str, message: str) -> None:
    text = f'[params]\n"pretrain.train.lr" = [1e-3, 2e-3]\n\n[pruning]\n{pruning}\n'
    with pytest.raises(SpaceError, match=message):
        read_space(write(tmp_path, text))


def test_pruning_needs_a_pretraining_dimension_and_eval_points(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="no dimension is under pretrain"):
        checked(tmp_path, GRID + "\n[pruning]\n")
    no_evals = [o for o in FAST if not o.startswith("pretrain.train.eval_every")] + [
        "pretrain.train.eval_every=0"
    ]
    space = read_space(write(tmp_path, PRUNING.format(seed=0)))
    with pytest.raises(SpaceError, match="eval_every is 0"):
        check_space(space, "tiny", tmp_path, no_evals)
    assert space.pruning is not None and space.identity()["pruning"]["startup_trials"] == 1


def test_trial_reporter_prunes_a_trial_behind_the_median_and_forwards_every_metric(tmp_path: Path) -> None:
    from tasks.run.context import PruneLink
    from tasks.run.pruning import TrialReporter
    from tasks.sink import MemorySink

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    first = study.ask()
    for step, loss in ((10, 5.0), (20, 4.0)):
        first.report(-loss, step)
    study.tell(first, 50.0)
    link = PruneLink(storage=storage, study_name="s", trial_number=1, startup_trials=1)
    study.ask()  # trial 1: ahead of trial 0 at step 10, behind it at step 20
    inner = MemorySink()
    reporter = TrialReporter(inner, link)
    reporter.log_metrics({"loss": 7.0}, 5)  # a training step: not an evaluation point
    reporter.log_metrics({"val_loss": 4.5}, 10)
    with pytest.raises(optuna.TrialPruned, match=r"trial 1 pruned at step 20: val_loss 4\.2000"):
        reporter.log_metrics({"val_loss": 4.2}, 20)
    assert [s for s, _ in inner.history] == [5, 10, 20]  # forwarded before the decision
    assert optuna.load_study(study_name="s", storage=storage).trials[1].intermediate_values == {
        10: -4.5,
        20: -4.2,
    }
    with pytest.raises(RuntimeError, match="no running trial 7"):
        TrialReporter(inner, link.model_copy(update={"trial_number": 7}))


def grid_seed_with_second(tmp_path: Path, space_text: str, lr: float) -> int:
    """A grid seed whose second trial has ``lr`` (Optuna's grid order is a seeded permutation)."""
    from tasks.sweep import study as studies

    for seed in range(20):
        space = read_space(write(tmp_path, space_text.format(seed=seed)))
        study = optuna.create_study(sampler=studies.make_sampler(space), direction="maximize")
        order = [studies.ask(study, space).params["pretrain.train.lr"] for _ in range(2)]
        if order[1] == lr:
            return seed
    raise AssertionError("no grid seed in 0..19 puts that value second")


@pytest.mark.slow
def test_sweep_prunes_a_pretraining_trial_behind_the_median(tmp_path: Path) -> None:
    """lr 1e-7 barely moves the encoder: at the first evaluation point (step 10) its validation
    loss is above the completed trial's, so its pre-training stops there and the trial is PRUNED,
    counted towards --trials and not ranked; the good trial is the best one and is scored on dev."""
    workdir = tmp_path / "w"
    space = write(tmp_path, PRUNING.format(seed=grid_seed_with_second(tmp_path, PRUNING, 1e-7)))
    overrides = [o for o in FAST if not o.startswith("pretrain.train.max_steps")] + [
        "pretrain.train.max_steps=40"
    ]
    proc = launch(workdir, space, trials=2, parallel=1, overrides=overrides)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{workdir / 'sweep' / 'optuna.db'}")
    states = {t.params["pretrain.train.lr"]: t for t in study.trials}
    assert states[2e-3].state.name == "COMPLETE" and states[1e-7].state.name == "PRUNED"
    assert states[1e-7].last_step == 10 and states[2e-3].last_step == 40
    finished = [d for d in (workdir / "pretrain").iterdir() if (d / "manifest.json").is_file()]
    assert len(finished) == 1  # the pruned pre-training left nothing that looks finished

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bertflow").experiment_id
    (pruned_run,) = client.search_runs([experiment], "tags.`bertflow.sweep.pruned` != ''")
    assert pruned_run.data.tags[TRIAL_TAG] == str(states[1e-7].number)
    assert "pruned at step 10" in pruned_run.data.tags["bertflow.sweep.pruned"]
    (record,) = (workdir / "sweep").glob("*/sweep.json")
    summary = json.loads(record.read_text())
    assert [t["step"] for t in summary["pruned_trials"]] == [10] and summary["pruned_trials"][0]["value"] > 0
    assert summary["best_params"] == {"pretrain.train.lr": 2e-3} and len(summary["trials"]) == 1
    assert "pruned at step 10" in (record.parent / "trials.md").read_text()


@pytest.mark.parametrize("name", ["finetune-lr-batch", "pretrain-lr-mask"])
def test_shipped_spaces_check_against_the_tiny_preset(tmp_path: Path, name: str) -> None:
    from tasks.sweep.space import resolve_space

    space = read_space(resolve_space(name))
    check_space(space, "tiny", tmp_path)
    assert (space.pruning is not None) == (name == "pretrain-lr-mask")
