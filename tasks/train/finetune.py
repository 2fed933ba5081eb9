"""Fine-tune stage: one shared encoder + one head per task (BERT family), or one encoder-decoder
trained text-to-text (T5 family), on a T5-style task mixture.

The mixture and its deterministic batch schedule are ``tasks.train.mixing``; what differs
between the families (model, features, loss, transfer knobs) is ``tasks.train.families``,
picked from the checkpoint.

Modes (T5 §3.5): ``multitask`` trains one model on the mixture for `max_steps`, then
optionally fine-tunes a copy per task for `then_single_steps` more steps on that task
alone ("multi-task + fine-tuning"). ``single`` trains one model per task, each its own
`fit()` run. Budget rule for ``single``: task t trains for round(max_steps x rate_t)
steps (at least 1), rate_t being its mixing rate, i.e. exactly the share of steps the
mixture would give it, so single-task and multi-task runs see the same number of
batches of every task and the same total compute.

Seeds: every seed in `seeds` trains its own model (set); with several, each set is
scored on the dev sets and the MEDIAN-scoring seed's set becomes the stage's model (the
top level of the output, hard-linked), the others stay under ``seeds/<seed>/`` for the
evaluate stage's per-seed and median report. The median, not the best, because picking
the best of n seeds on dev would report an optimistically biased number and register a
lucky model; for an even count the lower median is taken.

Output: a self-contained checkpoint dir (model.safetensors, config.json with encoder
config and head specs, the input checkpoint's tokenizer files, tasks.json), plus
``per_task/<TASK>/`` checkpoints and members.json when tasks have their own model, and
finetune.json (mode, seeds, per-seed selection scores, median seed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from torch import nn

from models.io import save_checkpoint
from tasks.data.tokenizer import TOKENIZER_FILES
from tasks.downstream.features import read_examples, task_file
from tasks.downstream.modelset import FINETUNE_INFO, write_members
from tasks.downstream.scoring import ScoringConfig, evaluate_model_set, selection_score
from tasks.downstream.selection import split_examples
from tasks.downstream.tasks import TaskSpec, get_task
from tasks.engine.device import pick_device
from tasks.engine.loop import fit
from tasks.engine.settings import TrainSettings
from tasks.sink import MetricSink, PrefixedSink
from tasks.store.artifact import Artifact
from tasks.store.stage import Job, Stage
from tasks.train.families import FinetuneFamily, family_of
from tasks.train.finetune_config import FinetuneConfig
from tasks.train.mixing import MultiTaskBatchSource, mixing_rates, padding_waste, single_task_steps

log = logging.getLogger(__name__)


def train_features(
    cfg: FinetuneConfig, family: FinetuneFamily, tokenizer: Tokenizer, specs: Sequence[TaskSpec]
) -> dict[str, list]:
    """Tokenized training inputs per task (`training_examples`: the hold-out and the cap applied)."""
    out = {}
    for k, spec in enumerate(specs):
        examples = training_examples(cfg, spec, k)
        out[spec.name] = family.encode(cfg, tokenizer, spec, examples)
        log.info("%s: %d train examples -> %d features", spec.name, len(examples), len(out[spec.name]))
    return out


def training_examples(cfg: FinetuneConfig, spec: TaskSpec, k: int) -> list:
    """The task's train file, less the selection split when ``hold_out`` is set, after the optional cap.

    The cap's subset is drawn with the FIRST seed and shared by all seeds (``k``: the task's position),
    so seeds differ in training randomness only, not in the data they see.
    """
    examples = read_examples(cfg.data_dir, spec, spec.train_file)
    if cfg.hold_out is not None:
        examples = split_examples(examples, spec.name, cfg.hold_out)[0]
    cap = cfg.max_train_examples_per_task
    if cap is not None and len(examples) > cap:
        rng = np.random.default_rng([cfg.seeds[0], 1000 + k])
        examples = [examples[i] for i in np.sort(rng.choice(len(examples), cap, replace=False))]
    return examples


def run_settings(cfg: FinetuneConfig, steps: int) -> TrainSettings:
    """The shared settings for one fit() of `steps` steps (single-task runs are shorter than the mixture)."""
    return cfg.train.model_copy(
        update={"max_steps": steps, "eval_every": cfg.train.eval_every or max(1, steps // 50)}
    )


@dataclass(frozen=True)
class TrainPlan:
    """What every training run of one stage shares: settings, data, mixture and where to resume."""

    cfg: FinetuneConfig
    family: FinetuneFamily
    specs: tuple[TaskSpec, ...]
    features: Mapping[str, Sequence[Any]]
    rates: Mapping[str, float]
    checkpoint_dir: Path
    resume_root: Path

    def resume_dir(self, seed: int, phase: str) -> Path | None:
        return self.resume_root / f"seed{seed}-{phase}" if self.cfg.train.checkpoint_every else None


def train_run(
    plan: TrainPlan,
    model: nn.Module,
    tasks: Sequence[str],
    steps: int,
    seed: int,
    sink: MetricSink,
    phase: str,
) -> dict[str, float]:
    """One fit() of `model` on the mixture of `tasks` (rates renormalised); returns steps and train losses."""
    total = sum(plan.rates[t] for t in tasks)
    rates = {t: plan.rates[t] / total for t in tasks}
    source = MultiTaskBatchSource(
        {t: plan.features[t] for t in tasks},
        rates,
        plan.cfg.batch_size,
        steps,
        seed,
        plan.cfg.group_by_length,
        plan.family.collate,
    )
    objective = plan.family.objective(tasks, {s.name: s for s in plan.specs})
    if plan.cfg.freeze_embeddings:  # no grad: AdamW skips them, weight decay included
        plan.family.word_embeddings(model).requires_grad_(False)
    result = fit(
        model,
        objective,
        source,
        run_settings(plan.cfg, steps),
        sink,
        evaluate=lambda: {f"train_loss/{t}": v for t, v in objective.recent_losses().items()},
        checkpoint_dir=plan.resume_dir(seed, phase),
        seed=seed,
        param_groups=plan.family.param_groups(model, plan.cfg),
        step_hook=plan.family.step_hook(plan.cfg),
    )
    losses = {f"train_loss/{t}": v for t, v in objective.recent_losses().items()}
    return {"steps": result.steps, "padding_waste": padding_waste(source), **losses}


def train_model_set(plan: TrainPlan, seed: int, dest: Path, sink: MetricSink) -> dict[str, float]:
    """Train one seed's model(s) into `dest` following `plan.cfg.mode`; returns a flat summary."""
    cfg, family, members, summary = plan.cfg, plan.family, {}, {}
    if cfg.mode == "multitask":
        model = family.build_model(cfg, plan.checkpoint_dir, plan.specs, seed).to(pick_device())
        summary = train_run(plan, model, cfg.tasks, cfg.train.max_steps, seed, sink, "multitask")
        write_output(dest, model, plan, plan.specs)
    else:
        write_tokenizer_files(dest, plan.checkpoint_dir, plan.specs)  # no shared model at the top level
    for spec in plan.specs if (cfg.mode == "single" or cfg.then_single_steps) else ():
        if cfg.mode == "single":
            tuned = family.build_model(cfg, plan.checkpoint_dir, [spec], seed).to(pick_device())
            steps = single_task_steps(cfg.train.max_steps, plan.rates[spec.name])
        else:  # multi-task + fine-tuning: continue from the multi-task model on this task alone
            tuned, steps = family.task_copy(model, spec.name), cfg.then_single_steps
        run = train_run(plan, tuned, [spec.name], steps, seed, PrefixedSink(sink, f"{spec.name}/"), spec.name)
        summary[f"single_steps/{spec.name}"] = run["steps"]
        summary[f"single_train_loss/{spec.name}"] = run[f"train_loss/{spec.name}"]
        summary[f"single_padding_waste/{spec.name}"] = run["padding_waste"]
        members[spec.name] = f"per_task/{spec.name}"
        write_output(dest / members[spec.name], tuned, plan, [spec])
    write_members(dest, members)
    return summary


def write_tokenizer_files(out: Path, checkpoint_dir: Path, specs: Sequence[TaskSpec]) -> None:
    """The input checkpoint's tokenizer files + tasks.json (the specs the heads were trained for)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (checkpoint_dir / name).is_file():
            shutil.copy2(checkpoint_dir / name, out / name)
    (out / "tasks.json").write_text(json.dumps({s.name: asdict(s) for s in specs}, indent=2))


def write_output(out: Path, model: nn.Module, plan: TrainPlan, specs: Sequence[TaskSpec]) -> None:
    """A self-contained checkpoint: weights + config, tokenizer files and tasks.json."""
    extra = {"tasks": [s.name for s in specs], **plan.family.extra_config(plan.cfg)}
    save_checkpoint(out, model.cpu(), extra_config=extra)
    model.to(pick_device())
    write_tokenizer_files(out, plan.checkpoint_dir, specs)


def pick_median_seed(
    cfg: FinetuneConfig, specs: Sequence[TaskSpec], sets: Mapping[int, Path]
) -> tuple[int, dict]:
    """(median seed, {seed: score}): each seed's set scored on the dev sets, or on the held-out
    selection split when there is one (a sweep's trials never look at the dev sets)."""
    split = {"split": "selection", "selection": cfg.hold_out} if cfg.hold_out is not None else {}
    eval_cfg = ScoringConfig(
        data_dir=cfg.data_dir, max_seq_len=cfg.max_seq_len, doc_stride=cfg.doc_stride, **split
    )
    scores = {
        seed: selection_score(evaluate_model_set(eval_cfg, d, specs).per_task) for seed, d in sets.items()
    }
    ranked = sorted(scores, key=lambda seed: (scores[seed], seed))
    return ranked[(len(ranked) - 1) // 2], scores


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of `src` into `dst` (copy where links are not possible): no extra disk."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def train_seeds(plan: TrainPlan, out: Path, sink: MetricSink) -> tuple[dict, dict]:
    """Train every seed; returns (summary of the stage's model, finetune.json payload)."""
    seeds = plan.cfg.seeds
    info: dict = {"mode": plan.cfg.mode, "seeds": list(seeds), "median_seed": seeds[0]}
    if len(seeds) == 1:
        return train_model_set(plan, seeds[0], out, sink), info
    sets = {seed: out / "seeds" / str(seed) for seed in seeds}
    summaries = {
        seed: train_model_set(plan, seed, sets[seed], PrefixedSink(sink, f"seed{seed}/")) for seed in seeds
    }
    median, scores = pick_median_seed(plan.cfg, plan.specs, sets)
    link_tree(sets[median], out)
    log.info("seed selection scores %s: median seed %d is the stage's model", scores, median)
    info |= {
        "median_seed": median,
        "selection_scores": {str(s): v for s, v in scores.items()},
        "seed_dirs": {str(s): f"seeds/{s}" for s in seeds},
    }
    summary = {**summaries[median], "median_seed": median}
    return summary | {f"selection_score/seed{s}": v for s, v in scores.items()}, info


def build_finetune(cfg: FinetuneConfig, checkpoint: Artifact, *, out: Path, job: Job) -> dict:
    """Fine-tune `checkpoint`'s encoder on `cfg.tasks` into `out` (killed runs resume from job.scratch)."""
    specs = tuple(get_task(name) for name in cfg.tasks)
    family = family_of(checkpoint.dir)
    family.check(cfg, specs)
    tokenizer = Tokenizer.from_file(str(checkpoint.file("tokenizer.json")))
    features = train_features(cfg, family, tokenizer, specs)
    sizes = {t: len(f) for t, f in features.items()}
    rates = mixing_rates(sizes, cfg.mixing, cfg.mixing_cap_k, cfg.temperature)
    plan = TrainPlan(cfg, family, specs, features, rates, checkpoint.dir, job.scratch)
    summary, info = train_seeds(plan, out, job.sink)
    (out / FINETUNE_INFO).write_text(json.dumps(info, indent=2))
    for name in features:
        summary[f"train_features/{name}"] = len(features[name])
        summary[f"mixing_rate/{name}"] = rates[name]
    return summary


def task_files(cfg: FinetuneConfig, workdir: Path) -> list[Path]:
    """The downstream files fine-tuning reads: train files, and dev files when seeds are ranked on them."""
    specs = [get_task(name) for name in cfg.tasks]
    files = [task_file(cfg.data_dir, s, s.train_file) for s in specs]
    if len(cfg.seeds) > 1 and cfg.hold_out is None:
        files += [task_file(cfg.data_dir, s, split.file) for s in specs for split in s.dev_splits]
    return files


finetune = Stage("finetune", build_finetune, reads=task_files, log_files=("config.json", "tasks.json"))
