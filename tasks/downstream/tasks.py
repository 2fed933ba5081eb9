"""The downstream task registry: everything task-specific lives in one `TaskSpec` entry.

Readers, feature builders, heads, metrics and the evaluation report all read the spec
instead of branching on task names, so adding a task is one entry in `TASKS` (plus a
metric name the GLUE metric already knows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["classification", "regression", "span", "token"]


@dataclass(frozen=True)
class DevSplit:
    """One evaluation file of a task; `suffix` tells its metrics apart ("" for a task's only dev file)."""

    suffix: str
    file: str


@dataclass(frozen=True)
class TextFormat:
    """A task as T5 writes it (Raffel et al. 2020, appendix D): ``prefix field: text field: text``.

    `fields` names each shown text field and its index in the example's texts, in the order the
    paper writes them (MNLI puts the hypothesis first). `targets` are the words that stand for
    the classes, in class-index order; a regression task writes its score, a span task its answer.
    """

    prefix: str
    fields: tuple[tuple[str, int], ...]
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """How to read, model and score one downstream task.

    `text_fields` and `label_field` are header column names of the GLUE tsv. A file
    without a header row (CoLA) names its columns through `headerless_columns`.
    `labels` lists the raw label strings in class-index order (classification only);
    `value_range` bounds a regression target (STS-B scores are 0-5). `no_answer` marks a
    span task whose questions may be unanswerable (SQuAD v2.0): its reader accepts empty
    answer lists and its scoring compares a [CLS] "null" score with the best span.

    A ``token`` task (NER) tags every word: `labels` is its IOB2 tag set in class-index
    order, its files are CoNLL-style (`tasks.downstream.conll`) under ``<data_dir>/<dir_name>/``,
    and `headerless_columns` + `label_field` name the tag column when it is not the last one.
    `text` is the task's text-to-text format for T5 (None: the task has none, e.g. tagging).
    """

    name: str
    dir_name: str
    kind: TaskKind
    text_fields: tuple[str, ...]
    label_field: str
    metrics: tuple[str, ...]
    labels: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None
    id_field: str | None = None
    headerless_columns: tuple[str, ...] | None = None
    train_file: str = "train.tsv"
    dev_splits: tuple[DevSplit, ...] = (DevSplit("", "dev.tsv"),)
    is_glue: bool = True
    no_answer: bool = False
    text: TextFormat | None = None

    @property
    def num_labels(self) -> int:
        """Width of the task's head output: classes, 1 for a regression value, 2 for span start/end."""
        if self.kind in ("classification", "token"):
            return len(self.labels)
        return 1 if self.kind == "regression" else 2

    def metric_keys(self, reported: Mapping[str, float] | None = None) -> tuple[str, ...]:
        """Names of the task's reported numbers, e.g. MNLI -> accuracy_matched, accuracy_mismatched.

        With ``reported`` (a task's scores) from a selection split, one slice with no dev-file
        suffix, the plain metric names.
        """
        if reported is not None and len(self.dev_splits) > 1 and all(m in reported for m in self.metrics):
            return self.metrics
        return tuple(
            f"{metric}_{split.suffix}" if split.suffix else metric
            for split in self.dev_splits
            for metric in self.metrics
        )


_BINARY = ("0", "1")


def iob2_tags(*types: str) -> tuple[str, ...]:
    """``O`` then ``B-``/``I-`` of every entity type, in that order (the head's class indices)."""
    return ("O", *(f"{p}-{t}" for t in types for p in ("B", "I")))


_ENTAIL = ("entailment", "not_entailment")
_PAIR = (("sentence1", 0), ("sentence2", 1))

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="CoLA",
            dir_name="CoLA",
            kind="classification",
            text_fields=("sentence",),
            label_field="label",
            labels=_BINARY,
            metrics=("matthews_correlation",),
            headerless_columns=("source", "label", "original_label", "sentence"),
            text=TextFormat("cola", (("sentence", 0),), ("unacceptable", "acceptable")),
        ),
        TaskSpec(
            name="SST-2",
            dir_name="SST-2",
            kind="classification",
            text_fields=("sentence",),
            label_field="label",
            labels=_BINARY,
            metrics=("accuracy",),
            text=TextFormat("sst2", (("sentence", 0),), ("negative", "positive")),
        ),
        TaskSpec(
            name="MRPC",
            dir_name="MRPC",
            kind="classification",
            text_fields=("#1 String", "#2 String"),
            label_field="Quality",
            labels=_BINARY,
            metrics=("accuracy", "f1"),
            text=TextFormat("mrpc", _PAIR, ("not_equivalent", "equivalent")),
        ),
        TaskSpec(
            name="STS-B",
            dir_name="STS-B",
            kind="regression",
            text_fields=("sentence1", "sentence2"),
            label_field="score",
            value_range=(0.0, 5.0),
            metrics=("pearson", "spearmanr"),
            id_field="index",
            text=TextFormat("stsb", _PAIR),
        ),
        TaskSpec(
            name="QQP",
            dir_name="QQP",
            kind="classification",
            text_fields=("question1", "question2"),
            label_field="is_duplicate",
            labels=_BINARY,
            metrics=("accuracy", "f1"),
            id_field="id",
            text=TextFormat("qqp", (("question1", 0), ("question2", 1)), ("not_duplicate", "duplicate")),
        ),
        TaskSpec(
            name="MNLI",
            dir_name="MNLI",
            kind="classification",
            text_fields=("sentence1", "sentence2"),
            label_field="gold_label",
            labels=("entailment", "neutral", "contradiction"),
            metrics=("accuracy",),
            id_field="index",
            dev_splits=(DevSplit("matched", "dev_matched.tsv"), DevSplit("mismatched", "dev_mismatched.tsv")),
            text=TextFormat(
                "mnli", (("hypothesis", 1), ("premise", 0)), ("entailment", "neutral", "contradiction")
            ),
        ),
        TaskSpec(
            name="QNLI",
            dir_name="QNLI",
            kind="classification",
            text_fields=("question", "sentence"),
            label_field="label",
            labels=_ENTAIL,
            metrics=("accuracy",),
            id_field="index",
            text=TextFormat("qnli", (("question", 0), ("sentence", 1)), _ENTAIL),
        ),
        TaskSpec(
            name="RTE",
            dir_name="RTE",
            kind="classification",
            text_fields=("sentence1", "sentence2"),
            label_field="label",
            labels=_ENTAIL,
            metrics=("accuracy",),
            id_field="index",
            text=TextFormat("rte", _PAIR, _ENTAIL),
        ),
        TaskSpec(
            name="WNLI",
            dir_name="WNLI",
            kind="classification",
            text_fields=("sentence1", "sentence2"),
            label_field="label",
            labels=_BINARY,
            metrics=("accuracy",),
            id_field="index",
            text=TextFormat("wnli", _PAIR, ("not_entailment", "entailment")),
        ),
        TaskSpec(
            name="SQuAD",
            dir_name="squad",
            kind="span",
            text_fields=("question", "context"),
            label_field="answers",
            metrics=("exact_match", "f1"),
            train_file="train.json",
            dev_splits=(DevSplit("", "dev.json"),),
            is_glue=False,
            text=TextFormat("", (("question", 0), ("context", 1))),
        ),
        TaskSpec(
            name="SQuAD-v2",
            dir_name="squad-v2",
            kind="span",
            text_fields=("question", "context"),
            label_field="answers",
            metrics=("exact", "f1"),  # the official v2 script's names; it also reports HasAns/NoAns/best_*
            train_file="train.json",
            dev_splits=(DevSplit("", "dev.json"),),
            is_glue=False,
            no_answer=True,
        ),
        TaskSpec(
            name="WikiANN-en",
            dir_name="ner/wikiann-en",
            kind="token",
            text_fields=("token",),
            label_field="tag",
            labels=iob2_tags("PER", "ORG", "LOC"),
            metrics=("f1",),  # entity-level micro F1; precision, recall and per-type scores are reported too
            train_file="train.conll",
            dev_splits=(DevSplit("", "dev.conll"),),
            is_glue=False,
        ),
        TaskSpec(
            name="CoNLL-2003",
            dir_name="ner/conll2003",
            kind="token",
            text_fields=("token",),
            label_field="ner",
            labels=iob2_tags("PER", "ORG", "LOC", "MISC"),
            metrics=("f1",),
            headerless_columns=("token", "pos", "chunk", "ner"),  # the original eng.* files, IOB1
            train_file="train.txt",
            dev_splits=(DevSplit("", "valid.txt"),),
            is_glue=False,
        ),
    )
}


class UnknownTaskError(ValueError):
    """A task name that is not in the registry."""


def get_task(name: str) -> TaskSpec:
    """The spec registered under `name` (exact spelling, e.g. "SST-2", "STS-B", "SQuAD")."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def check_task_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` unchanged if every one is registered and none repeats (config validators use this)."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UnknownTaskError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"tasks listed twice: {list(names)}")
    return names
