"""Evaluate stage: report shape, GLUE averages, SQuAD decoding output and predictions files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from word_tokenizer import word_tokenizer

from models.config import EncoderConfig
from models.heads import HeadSpec
from models.io import save_checkpoint
from models.multitask import MultiTaskModel
from tasks.downstream.metrics.glue import glue_average
from tasks.downstream.scoring import MissingHeadError
from tasks.judge.evaluation import EvalConfig, evaluate_checkpoint
from tasks.sink import MemorySink
from tasks.store.artifact import Artifact

WORDS = ("a", "man", "dog", "runs", "sleeps", "cat", "sat", "on", "the", "red", "mat", "is", "what", "color")
MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
)
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
LABELS = ("entailment", "neutral", "contradiction")


def tiny_tokenizer() -> Tokenizer:
    """Word-level WordPiece over WORDS with the project's fixed special ids and BERT template."""
    return word_tokenizer([*WORDS, ".", "?"])


def write_dev_sets(data: Path) -> None:
    """Tiny dev files in the original formats: SST-2, STS-B, MNLI (m + mm), WNLI, SQuAD."""
    sentences = ["a man runs .", "a dog sleeps .", "the cat sat on the mat .", "a cat runs ."]
    files = {
        "SST-2/dev.tsv": ["sentence\tlabel", *[f"{s}\t{i % 2}" for i, s in enumerate(sentences)]],
        "STS-B/dev.tsv": [
            STSB_HEADER,
            *[f"{i}\tg\tf\ty\t{i}\tn\tn\t{s}\t{s}\t{i + 0.5}" for i, s in enumerate(sentences)],
        ],
        "WNLI/dev.tsv": [
            "index\tsentence1\tsentence2\tlabel",
            *[f"{i}\t{s}\t{s}\t{i % 2}" for i, s in enumerate(sentences)],
        ],
    }
    for split, n in (("dev_matched.tsv", 3), ("dev_mismatched.tsv", 2)):
        rows = [
            f"{i}\t1\t1e\tg\t(a)\t(b)\t(A)\t(B)\t{sentences[i]}\ta dog .\tx\tx\tx\tx\tx\t{LABELS[i]}"
            for i in range(n)
        ]
        files[f"MNLI/{split}"] = [MNLI_HEADER, *rows]
    for name, lines in files.items():
        (data / "glue" / name).parent.mkdir(parents=True, exist_ok=True)
        (data / "glue" / name).write_text("\n".join(lines) + "\n")
    context = "the cat sat on the red mat . " * 6  # 48 tokens: several windows at max_seq_len=24
    qas = [
        {"id": f"q{i}", "question": "what color ?", "answers": [{"text": "red", "answer_start": 19}]}
        for i in range(3)
    ]
    (data / "squad").mkdir(parents=True)
    payload = {"version": "1.1", "data": [{"paragraphs": [{"context": context, "qas": qas}]}]}
    (data / "squad" / "dev.json").write_text(json.dumps(payload))


def tiny_finetuned(path: Path) -> Artifact:
    cfg = EncoderConfig(
        vocab_size=len(WORDS) + 7, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
    )
    heads = {
        "SST-2": HeadSpec("classification", 2),
        "STS-B": HeadSpec("regression"),
        "MNLI": HeadSpec("classification", 3),
        "WNLI": HeadSpec("classification", 2),
        "SQuAD": HeadSpec("span"),
    }
    torch.manual_seed(0)
    save_checkpoint(path, MultiTaskModel(cfg, heads))
    tiny_tokenizer().save(str(path / "tokenizer.json"))
    return Artifact(stage="finetune", fingerprint="tinyft00", path=str(path))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, MemorySink]:
    root = tmp_path_factory.mktemp("eval")
    write_dev_sets(root / "data")
    cfg = EvalConfig(
        data_dir=str(root / "data"),
        tasks=("SST-2", "STS-B", "MNLI", "WNLI", "SQuAD"),
        max_seq_len=24,
        doc_stride=8,
        batch_size=2,
    )
    sink = MemorySink()
    return evaluate_checkpoint(cfg, tiny_finetuned(root / "ckpt"), workdir=root / "work", sink=sink), sink


def test_report_shape_and_averages(evaluated: tuple[Artifact, MemorySink]) -> None:
    artifact, _ = evaluated
    report = json.loads(artifact.file("report.json").read_text())
    per_task = report["per_task"]
    assert {k: sorted(v) for k, v in per_task.items()} == {
        "SST-2": ["accuracy"],
        "STS-B": ["pearson", "spearmanr"],
        "MNLI": ["accuracy_matched", "accuracy_mismatched"],
        "WNLI": ["accuracy"],
        "SQuAD": ["exact_match", "f1"],
    }
    assert all(0.0 <= v <= 100.0 for k, m in per_task.items() if k != "STS-B" for v in m.values())
    assert report["glue_avg"] == pytest.approx(glue_average(per_task, include_wnli=False))
    assert report["glue_avg_name"] == "glue_avg[MNLI,SST-2,STS-B]"
    assert report["glue_avg_with_wnli"] == pytest.approx(glue_average(per_task, include_wnli=True))
    assert report["glue_avg_with_wnli_name"] == "glue_avg[MNLI,SST-2,STS-B,WNLI]"
    assert report["squad"] == per_task["SQuAD"]
    assert report["dev_examples"]["MNLI"] == {"dev_matched.tsv": 3, "dev_mismatched.tsv": 2}


def test_predictions_files_back_the_scores(evaluated: tuple[Artifact, MemorySink]) -> None:
    artifact, _ = evaluated
    report = json.loads(artifact.file("report.json").read_text())

    def rows(task: str) -> list[dict]:
        return [
            json.loads(line) for line in artifact.file(f"predictions/{task}.jsonl").read_text().splitlines()
        ]

    sst = rows("SST-2")
    assert len(sst) == 4
    accuracy = 100 * sum(r["prediction"] == r["label"] for r in sst) / len(sst)
    assert report["per_task"]["SST-2"]["accuracy"] == pytest.approx(accuracy)
    mnli = rows("MNLI")
    assert [r["split"] for r in mnli] == ["dev_matched.tsv"] * 3 + ["dev_mismatched.tsv"] * 2
    assert all(r["prediction"] in LABELS for r in mnli)
    squad = rows("SQuAD")
    context = "the cat sat on the red mat . " * 6
    assert len(squad) == 3 and all(r["prediction_text"] in context and r["n_best"] for r in squad)
    em = 100 * sum(r["prediction_text"] == "red" for r in squad) / 3
    assert report["squad"]["exact_match"] == pytest.approx(em)


def test_summary_is_flat_and_logged(evaluated: tuple[Artifact, MemorySink]) -> None:
    artifact, sink = evaluated
    assert {
        "SST-2/accuracy",
        "MNLI/accuracy_mismatched",
        "SQuAD/f1",
        "glue_avg",
        "glue_avg_with_wnli",
    } <= set(artifact.summary)
    assert all(isinstance(v, float) for v in artifact.summary.values())
    assert sink.history == [(0, artifact.summary)]


def test_missing_head_is_a_clear_error(tmp_path: Path) -> None:
    write_dev_sets(tmp_path / "data")
    rte = tmp_path / "data" / "glue" / "RTE" / "dev.tsv"
    rte.parent.mkdir(parents=True)
    rte.write_text("index\tsentence1\tsentence2\tlabel\n0\ta man runs .\ta dog runs .\tentailment\n")
    cfg = EvalConfig(data_dir=str(tmp_path / "data"), tasks=("RTE",))
    with pytest.raises(MissingHeadError, match="no classification head with 2 outputs for task 'RTE'"):
        evaluate_checkpoint(
            cfg, tiny_finetuned(tmp_path / "ckpt"), workdir=tmp_path / "work", sink=MemorySink()
        )
    with pytest.raises(FileNotFoundError, match=r"glue/MRPC/dev\.tsv: input file not found"):
        evaluate_checkpoint(cfg.model_copy(update={"tasks": ("MRPC",)}), tiny_finetuned(tmp_path / "c2"),
                            workdir=tmp_path / "work")  # fmt: skip
