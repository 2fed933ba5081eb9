"""Evaluate stage: run a fine-tuned checkpoint on every task's dev set(s) and write a report.

Scores come from the project's own `evaluate.Metric` subclasses (official GLUE / SQuAD
definitions, 0-100 scale). The report carries the per-task numbers, the GLUE average
(inside each task first, then across tasks) without WNLI and, when WNLI was evaluated,
with it, each with a name that lists the tasks it covers, and SQuAD EM / F1. Every
prediction is written to ``predictions/<task>.jsonl`` so a score can be audited.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tokenizers import Tokenizer

from models.io import load_multitask
from models.multitask import MultiTaskModel
from tasks.artifacts import Artifact, build_stage
from tasks.downstream.features import Features, SpanFeatures, collate, encode_examples, read_examples
from tasks.downstream.glue import GlueExample
from tasks.downstream.spans import best_spans
from tasks.downstream.squad import SquadExample
from tasks.downstream.tasks import TASKS, DevSplit, TaskSpec, check_task_names, get_task
from tasks.engine.sink import MetricSink
from tasks.metrics.glue import GlueMetric, glue_average, glue_average_name
from tasks.metrics.squad import SquadMetric
from tasks.stage import StageContext, run_tracked

log = logging.getLogger(__name__)

STAGE = "evaluate"
VERSION = "1"
REPORT = "report.json"
N_BEST_WRITTEN = 5  # candidates kept per SQuAD question in predictions/SQuAD.jsonl


class EvalConfig(BaseModel):
    """Dev-set evaluation settings (flat and typed so Prefect renders a form)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: str = Field(description="Downstream data dir holding glue/<TASK>/dev*.tsv and squad/dev.json.")
    tasks: tuple[str, ...] = Field(
        ("CoLA", "SST-2", "MRPC", "STS-B", "RTE"),
        min_length=1,
        description=f"Tasks to evaluate (each needs a head in the checkpoint): {', '.join(TASKS)}.",
    )
    max_seq_len: int = Field(128, ge=8, le=4096, description="Token budget per input (pairs: longest-first).")
    doc_stride: int = Field(64, ge=1, le=4096, description="SQuAD: tokens between window starts.")
    n_best: int = Field(20, ge=1, le=100, description="SQuAD: start/end candidates per window.")
    max_answer_length: int = Field(30, ge=1, le=512, description="SQuAD: longest answer span in tokens.")
    batch_size: int = Field(64, ge=1, le=4096, description="Inference batch size.")
    max_examples_per_task: int | None = Field(
        None, ge=1, description="Score only the first N dev examples per file (smoke runs); None = all."
    )

    @field_validator("tasks")
    @classmethod
    def _known_unique(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        return check_task_names(tasks)


def model_outputs(
    model: MultiTaskModel, task: str, features: Sequence[Features], batch_size: int
) -> list[Any]:
    """Per-feature outputs in input order: (C,) logits, a float score, or (start, end) (T_f,) logits.

    Features are run in length order so each padded batch wastes little compute.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    outputs: list[Any] = [None] * len(features)
    with torch.no_grad():
        for lo in range(0, len(order), batch_size):
            chunk = order[lo : lo + batch_size]
            batch = collate([features[i] for i in chunk])
            out = model(
                task, **{k: batch[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask")}
            )
            for row, i in enumerate(chunk):
                outputs[i] = _row_output(out, row, len(features[i].input_ids))
    return outputs


def _row_output(out: Any, row: int, length: int) -> Any:
    if isinstance(out, tuple):  # span: (B, T) start and end logits, cut back to this feature's length
        return out[0][row, :length].float().cpu().numpy(), out[1][row, :length].float().cpu().numpy()
    value = out[row].float().cpu()
    return value.numpy() if value.ndim else float(value)


def score_glue(
    spec: TaskSpec, split: DevSplit, examples: Sequence[GlueExample], outputs: Sequence[Any]
) -> tuple[dict[str, float], list[dict]]:
    """Metrics of one GLUE dev file (keys suffixed for MNLI m/mm) and its prediction rows."""
    if spec.kind == "classification":
        preds: list[int | float] = [int(np.argmax(o)) for o in outputs]
    else:
        preds = [float(o) for o in outputs]
    scores = GlueMetric(spec.name).compute(predictions=preds, references=[e.label for e in examples])
    suffix = f"_{split.suffix}" if split.suffix else ""
    rows = [
        {
            "id": e.id,
            "split": split.file,
            "prediction": _label_name(spec, p),
            "label": _label_name(spec, e.label),
        }
        for e, p in zip(examples, preds, strict=True)
    ]
    return {f"{name}{suffix}": value for name, value in scores.items()}, rows


def _label_name(spec: TaskSpec, value: int | float) -> str | float:
    return spec.labels[int(value)] if spec.kind == "classification" else float(value)


def score_squad(
    cfg: EvalConfig,
    examples: Sequence[SquadExample],
    features: Sequence[SpanFeatures],
    outputs: Sequence[Any],
) -> tuple[dict[str, float], list[dict]]:
    """EM / F1 from the n-best decoded spans of every question over all its windows."""
    windows: dict[int, list[int]] = defaultdict(list)
    for i, feature in enumerate(features):
        windows[feature.example_index].append(i)
    predictions, rows = [], []
    for index, example in enumerate(examples):
        ids = windows[index]
        spans = best_spans(
            [features[i] for i in ids],
            example.context,
            [outputs[i][0] for i in ids],
            [outputs[i][1] for i in ids],
            n_best=cfg.n_best,
            max_answer_length=cfg.max_answer_length,
        )
        text = spans[0].text if spans else ""
        predictions.append({"id": example.id, "prediction_text": text})
        n_best = [{"text": s.text, "score": s.score} for s in spans[:N_BEST_WRITTEN]]
        rows.append(
            {
                "id": example.id,
                "prediction_text": text,
                "answers": list(example.answer_texts),
                "n_best": n_best,
            }
        )
    references = [
        {"id": e.id, "answers": {"text": list(e.answer_texts), "answer_start": [s for _, s in e.answers]}}
        for e in examples
    ]
    return SquadMetric().compute(predictions=predictions, references=references), rows


def evaluate_one_task(
    cfg: EvalConfig, model: MultiTaskModel, tokenizer: Tokenizer, spec: TaskSpec
) -> tuple[dict[str, float], list[dict], dict[str, int]]:
    """All dev files of one task: (metrics, prediction rows, examples scored per file)."""
    metrics: dict[str, float] = {}
    rows: list[dict] = []
    counts: dict[str, int] = {}
    for split in spec.dev_splits:
        examples = read_examples(cfg.data_dir, spec, split.file)[: cfg.max_examples_per_task]
        features = encode_examples(tokenizer, spec, examples, cfg.max_seq_len, cfg.doc_stride)
        outputs = model_outputs(model, spec.name, features, cfg.batch_size)
        if spec.kind == "span":
            scores, split_rows = score_squad(cfg, examples, features, outputs)  # type: ignore[arg-type]
        else:
            scores, split_rows = score_glue(spec, split, examples, outputs)  # type: ignore[arg-type]
        metrics.update(scores)
        rows.extend(split_rows)
        counts[split.file] = len(examples)
    return metrics, rows, counts


def load_model(checkpoint: Artifact, specs: Sequence[TaskSpec], max_seq_len: int) -> MultiTaskModel:
    """The fine-tuned model, checked to have a head of the right kind for every task asked for."""
    model = load_multitask(checkpoint.dir)
    if max_seq_len > model.cfg.max_position:
        raise ValueError(
            f"max_seq_len={max_seq_len} exceeds {checkpoint.dir}'s max_position={model.cfg.max_position}"
        )
    for spec in specs:
        head = model.head_specs.get(spec.name)
        if head is None or head.kind != spec.kind or head.num_labels != spec.num_labels:
            heads = {n: h.to_dict() for n, h in model.head_specs.items()}
            raise ValueError(
                f"{checkpoint.dir}: no {spec.kind} head with {spec.num_labels} outputs "
                f"for task {spec.name!r} (heads: {heads})"
            )
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def build_report(per_task: dict[str, dict[str, float]], dev_examples: dict[str, dict[str, int]]) -> dict:
    """report.json: per-task metrics, GLUE averages with their names, SQuAD, and dev-set sizes."""
    report: dict[str, Any] = {"per_task": per_task, "dev_examples": dev_examples}
    if any(TASKS[t].is_glue and t != "WNLI" for t in per_task):
        report["glue_avg"] = glue_average(per_task, include_wnli=False)
        report["glue_avg_name"] = glue_average_name(per_task, include_wnli=False)
    if "WNLI" in per_task:
        report["glue_avg_with_wnli"] = glue_average(per_task, include_wnli=True)
        report["glue_avg_with_wnli_name"] = glue_average_name(per_task, include_wnli=True)
    if "SQuAD" in per_task:
        report["squad"] = per_task["SQuAD"]
    return report


def flat_summary(report: dict) -> dict[str, float]:
    """Numbers only, flattened for metric logging: "SST-2/accuracy", "glue_avg", "SQuAD/f1", ..."""
    out = {
        f"{task}/{name}": value
        for task, metrics in report["per_task"].items()
        for name, value in metrics.items()
    }
    for key in ("glue_avg", "glue_avg_with_wnli"):
        if key in report:
            out[key] = report[key]
    return out


def evaluate_checkpoint(
    cfg: EvalConfig, checkpoint: Artifact, *, workdir: Path, sink: MetricSink, run_id: str | None = None
) -> Artifact:
    """Score `checkpoint` on every task's dev set; the artifact holds report.json and predictions/."""
    specs = [get_task(name) for name in cfg.tasks]

    def build(out: Path) -> dict:
        model = load_model(checkpoint, specs, cfg.max_seq_len)
        tokenizer = Tokenizer.from_file(str(checkpoint.file("tokenizer.json")))
        (out / "predictions").mkdir()
        per_task, dev_examples = {}, {}
        for done, spec in enumerate(specs):
            per_task[spec.name], rows, dev_examples[spec.name] = evaluate_one_task(
                cfg, model, tokenizer, spec
            )
            with (out / "predictions" / f"{spec.name}.jsonl").open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            log.info("%s: %s", spec.name, per_task[spec.name])
            sink.progress(done + 1, len(specs))
        report = build_report(per_task, dev_examples)
        (out / REPORT).write_text(json.dumps(report, indent=2))
        summary = flat_summary(report)
        sink.log_metrics(summary, step=0)
        return summary

    return build_stage(
        workdir=Path(workdir),
        stage=STAGE,
        version=VERSION,
        config=cfg,
        inputs=[checkpoint],
        build=build,
        run_id=run_id,
    )


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    cfg: EvalConfig, checkpoint: Artifact, ctx: StageContext, run_name: str = STAGE
) -> Artifact:
    return run_tracked(
        ctx,
        STAGE,
        cfg,
        [checkpoint],
        lambda sink, run_id: evaluate_checkpoint(cfg, checkpoint, workdir=ctx.path, sink=sink, run_id=run_id),
        files=["report.json", "predictions"],
        run_name=run_name,
    )
