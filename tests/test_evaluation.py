"""Evaluate stage: report shape, GLUE averages, SQuAD decoding output and predictions files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score
from tokenizers import Tokenizer
from word_tokenizer import word_tokenizer

from models.config import EncoderConfig
from models.heads import HeadSpec
from models.io import load_multitask, save_checkpoint
from models.multitask import MultiTaskModel
from tasks.downstream.scoring import MissingHeadError
from tasks.judge.evaluation import EvalConfig, evaluate_checkpoint, suite
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
def eval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval")


@pytest.fixture(scope="module")
def evaluated(eval_root: Path) -> tuple[Artifact, MemorySink]:
    root = eval_root
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
    # averaged inside each task first (MNLI m/mm, STS-B's two correlations), then across tasks
    mnli, sst = per_task["MNLI"], per_task["SST-2"]["accuracy"]
    task_scores = [
        (mnli["accuracy_matched"] + mnli["accuracy_mismatched"]) / 2,
        sst,
        (per_task["STS-B"]["pearson"] + per_task["STS-B"]["spearmanr"]) / 2,
    ]
    assert report["glue_avg"] == pytest.approx(sum(task_scores) / 3)
    assert report["glue_avg_name"] == "glue_avg[MNLI,SST-2,STS-B]"
    assert report["glue_avg_with_wnli"] == pytest.approx(
        (sum(task_scores) + per_task["WNLI"]["accuracy"]) / 4
    )
    assert report["glue_avg_with_wnli_name"] == "glue_avg[MNLI,SST-2,STS-B,WNLI]"
    assert report["squad"] == per_task["SQuAD"]
    assert report["dev_examples"]["MNLI"] == {"dev_matched.tsv": 3, "dev_mismatched.tsv": 2}


SENTENCES = ["a man runs .", "a dog sleeps .", "the cat sat on the mat .", "a cat runs ."]


def one_by_one(model: MultiTaskModel, task: str, inputs: list[tuple[str, ...]]) -> list:
    """The model's output for each input on its own: no batching, padding, sorting or truncation."""
    tok, outputs = tiny_tokenizer(), []
    with torch.no_grad():
        for texts in inputs:
            enc = tok.encode(*texts)
            ids, types = torch.tensor([enc.ids]), torch.tensor([enc.type_ids])
            outputs.append(model(task, ids, types, torch.ones_like(ids)))
    return outputs


def test_glue_scores_match_an_example_by_example_oracle(evaluated, eval_root: Path) -> None:
    """Every GLUE figure recomputed from single-example forwards, with sklearn / scipy as the metric."""
    artifact, _ = evaluated
    per_task = json.loads(artifact.file("report.json").read_text())["per_task"]
    model = load_multitask(eval_root / "ckpt").eval()

    def predicted(task: str, inputs: list[tuple[str, ...]]) -> list[int]:
        return [int(out.argmax()) for out in one_by_one(model, task, inputs)]

    sst = predicted("SST-2", [(s,) for s in SENTENCES])
    assert per_task["SST-2"]["accuracy"] == pytest.approx(100 * accuracy_score([0, 1, 0, 1], sst))
    rows = [json.loads(line) for line in artifact.file("predictions/SST-2.jsonl").read_text().splitlines()]
    assert [(r["prediction"], r["label"]) for r in rows] == [(str(p), str(i % 2)) for i, p in enumerate(sst)]
    rows = [json.loads(line) for line in artifact.file("predictions/MNLI.jsonl").read_text().splitlines()]
    for split, n in (("matched", 3), ("mismatched", 2)):
        mnli = predicted("MNLI", [(s, "a dog .") for s in SENTENCES[:n]])
        assert per_task["MNLI"][f"accuracy_{split}"] == pytest.approx(100 * accuracy_score(range(n), mnli))
        assert [r["prediction"] for r in rows if r["split"] == f"dev_{split}.tsv"] == [
            LABELS[p] for p in mnli
        ]
    wnli = predicted("WNLI", [(s, s) for s in SENTENCES])
    assert per_task["WNLI"]["accuracy"] == pytest.approx(100 * accuracy_score([0, 1, 0, 1], wnli))
    # STS-B: the untrained head's scores differ by ~1e-5, so batching noise (~1e-9) moves Pearson in the
    # 2nd decimal: check each written score against the oracle, then the metric on those scores
    scores = [float(out) for out in one_by_one(model, "STS-B", [(s, s) for s in SENTENCES])]
    rows = [json.loads(line) for line in artifact.file("predictions/STS-B.jsonl").read_text().splitlines()]
    written = [r["prediction"] for r in rows]
    assert written == pytest.approx(scores, abs=1e-8) and [r["label"] for r in rows] == [0.5, 1.5, 2.5, 3.5]
    assert per_task["STS-B"]["pearson"] == pytest.approx(100 * pearsonr(written, [0.5, 1.5, 2.5, 3.5])[0])
    assert per_task["STS-B"]["spearmanr"] == pytest.approx(100 * spearmanr(written, [0.5, 1.5, 2.5, 3.5])[0])


def test_squad_answer_is_the_best_span_over_all_windows(evaluated, eval_root: Path) -> None:
    """Brute force over every window of 18 context tokens (24 - [CLS] q [SEP] [SEP]), stride 8, and
    every span of <= 30 tokens in it, scored start + end logit, as the decoding defines."""
    artifact, _ = evaluated
    model = load_multitask(eval_root / "ckpt").eval()
    tok = tiny_tokenizer()
    context = "the cat sat on the red mat . " * 6
    question = tok.encode("what color ?", add_special_tokens=False).ids
    words = tok.encode(context, add_special_tokens=False)
    assert len(words.ids) == 48
    best = (-float("inf"), "")
    for start in (0, 8, 16, 24, 32):  # the last window reaches the 48th token
        ctx = words.ids[start : start + 18]
        ids = torch.tensor([[2, *question, 3, *ctx, 3]])
        types = torch.tensor([[0] * (len(question) + 2) + [1] * (len(ctx) + 1)])
        with torch.no_grad():
            start_logits, end_logits = (t[0] for t in model("SQuAD", ids, types, torch.ones_like(ids)))
        first = len(question) + 2
        for a in range(len(ctx)):
            for b in range(a, min(len(ctx), a + 30)):
                score = float(start_logits[first + a] + end_logits[first + b])
                text = context[words.offsets[start + a][0] : words.offsets[start + b][1]]
                best = max(best, (score, text))
    rows = [json.loads(line) for line in artifact.file("predictions/SQuAD.jsonl").read_text().splitlines()]
    assert [r["prediction_text"] for r in rows] == [best[1]] * 3
    assert rows[0]["n_best"][0]["score"] == pytest.approx(best[0], abs=1e-5)
    report = json.loads(artifact.file("report.json").read_text())
    assert report["squad"]["exact_match"] == (100.0 if best[1] == "red" else 0.0)


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
    report = json.loads(artifact.file("report.json").read_text())
    for task, metrics in report["per_task"].items():  # each figure of the report, under task/metric
        for name, value in metrics.items():
            assert artifact.summary[f"{task}/{name}"] == pytest.approx(value), (task, name)
    assert artifact.summary["glue_avg"] == pytest.approx(report["glue_avg"])
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


def test_suite_names_dev_files_as_the_data_dir_lays_them_out(tmp_path: Path) -> None:
    """A data dir of symlinks (glue_bench's view of the shared data) is the same suite as the real one."""
    real = tmp_path / "real" / "glue" / "SST-2"
    real.mkdir(parents=True)
    (real / "dev.tsv").write_text("sentence\tlabel\ngood .\t1\n")
    view = tmp_path / "view"
    view.mkdir()
    (view / "glue").symlink_to(tmp_path / "real" / "glue")
    linked, direct = (suite(EvalConfig(data_dir=str(d), tasks=("SST-2",))) for d in (view, tmp_path / "real"))
    assert linked["fingerprint"] == direct["fingerprint"]
    assert linked["config"]["data_dir"] == str(view)
