"""Text-to-text fine-tuning and scoring (T5 family): the paper's formats, reading outputs back, and a
tiny T5 fine-tuned on the same synthetic tasks as the BERT heads, scored by the same metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from configs import finetune_cfg
from test_finetune import write_synthetic_tasks

from models.io import load_t5, read_config, read_weights, save_checkpoint
from models.t5 import T5ForConditionalGeneration
from models.t5_config import T5Config
from tasks.data.ingest import IngestConfig, ingest
from tasks.data.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer
from tasks.downstream.glue import GlueExample
from tasks.downstream.squad import SquadExample
from tasks.downstream.tasks import get_task
from tasks.downstream.text_to_text import (
    INVALID_CLASS,
    INVALID_SCORE,
    NoTextFormatError,
    collate_text,
    encode_text_examples,
    input_text,
    parse_output,
    target_text,
)
from tasks.judge.evaluation import EvalConfig, evaluate_checkpoint
from tasks.sink import MemorySink
from tasks.store.artifact import Artifact
from tasks.train.finetune import finetune

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest

SQUAD = SquadExample("q1", "what color ?", "the cat sat on the red mat .", (("red", 19),))


def test_inputs_and_targets_follow_the_t5_papers_formats() -> None:
    sst2 = GlueExample("1", "a fine film", None, 1)
    assert input_text(get_task("SST-2"), sst2) == "sst2 sentence: a fine film"
    assert target_text(get_task("SST-2"), sst2) == "positive"
    pair = GlueExample("2", "a man sings .", "a man is singing .", 3.87)
    assert (
        input_text(get_task("STS-B"), pair) == "stsb sentence1: a man sings . sentence2: a man is singing ."
    )
    assert [target_text(get_task("STS-B"), replace(pair, label=v)) for v in (3.87, 3.9, 0.0, 5.0, 2.31)] == [
        "3.8", "4.0", "0.0", "5.0", "2.4",
    ]  # fmt: skip
    nli = GlueExample("3", "the premise", "the hypothesis", 2)
    assert input_text(get_task("MNLI"), nli) == "mnli hypothesis: the hypothesis premise: the premise"
    assert target_text(get_task("MNLI"), nli) == "contradiction"
    assert target_text(get_task("MRPC"), GlueExample("4", "a", "b", 0)) == "not_equivalent"
    assert (
        input_text(get_task("SQuAD"), SQUAD) == "question: what color ? context: the cat sat on the red mat ."
    )
    assert input_text(get_task("SQuAD"), SQUAD, closed_book=True) == "question: what color ?"
    assert target_text(get_task("SQuAD"), SQUAD) == "red"


def test_outputs_that_are_no_label_count_as_wrong() -> None:
    sst2, stsb, squad = get_task("SST-2"), get_task("STS-B"), get_task("SQuAD")
    assert parse_output(sst2, " positive ") == (1, True)
    assert parse_output(sst2, "positively") == (INVALID_CLASS, False)
    assert parse_output(stsb, "3.8") == (3.8, True)
    assert parse_output(stsb, "three") == (INVALID_SCORE, False)
    assert parse_output(squad, "the red mat") == ("the red mat", True)


def test_tasks_without_a_text_format_are_refused() -> None:
    for name in ("WikiANN-en", "SQuAD-v2"):
        with pytest.raises(NoTextFormatError, match=rf"task {name!r} cannot be fine-tuned text-to-text"):
            input_text(get_task(name), SQUAD)


@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Path]:
    """A random-init 'pre-trained' T5 with a Unigram tokenizer trained on the tasks' texts."""
    root = tmp_path_factory.mktemp("t2t")
    data = root / "data"
    write_synthetic_tasks(data)
    texts = [line for p in sorted((data / "glue").rglob("train.tsv")) for line in p.read_text().splitlines()]
    squad = json.loads((data / "squad" / "train.json").read_text())["data"][0]["paragraphs"]
    texts += [p["context"] + " what color ?" for p in squad]
    texts += ["positive negative question: context: sentence: sentence1: sentence2: stsb sst2"] * 20
    texts += [" ".join(f"{v / 5:.1f}" for v in range(26))] * 20
    (root / "texts.txt").write_text("\n".join(texts))
    sink = MemorySink()
    docs = ingest(IngestConfig(paths=(str(root / "texts.txt"),), txt_mode="lines", min_chars=1), workdir=root)
    tokenizer = train_tokenizer(
        TokenizerConfig(family="t5", algorithm="unigram", vocab_size=320), docs, workdir=root, sink=sink
    )
    vocab = load_tokenizer(tokenizer.dir).get_vocab_size()
    cfg = T5Config.from_size(
        "tiny", vocab_size=vocab, d_model=64, d_ff=128, num_heads=2, d_kv=32, dropout=0.0
    )
    torch.manual_seed(0)
    out = root / "pretrained"
    save_checkpoint(out, T5ForConditionalGeneration(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).write_bytes(tokenizer.file(name).read_bytes())
    return Artifact(stage="pretrain", fingerprint="t5tiny00", path=str(out)), data


def test_a_t5_model_learns_the_tasks_text_to_text_and_is_scored_by_the_same_metrics(
    t5_checkpoint, tmp_path: Path
) -> None:
    checkpoint, data = t5_checkpoint
    tasks = ("SST-2", "STS-B", "SQuAD")
    cfg = finetune_cfg(data_dir=str(data), tasks=tasks, batch_size=16, max_seq_len=64, lr=1e-3, max_steps=240)
    tuned = finetune(cfg, checkpoint, workdir=tmp_path, sink=MemorySink())
    assert read_config(tuned.dir)["text_to_text"] == {"closed_book_qa": False}
    report = evaluate_checkpoint(
        EvalConfig(data_dir=str(data), tasks=tasks, max_seq_len=64), tuned, workdir=tmp_path
    )
    summary = report.summary
    assert summary["SST-2/accuracy"] >= 90, summary  # the label is the word "good" / "bad" in the text
    assert summary["SQuAD/exact_match"] >= 80, summary  # the answer is the colour word of the context
    assert summary["STS-B/pearson"] >= 80, summary  # 4.0 when sentence1 says "good", else 1.0
    assert summary["SST-2/invalid_outputs"] == 0 and "glue_avg" in summary
    rows = [json.loads(line) for line in report.file("predictions/SST-2.jsonl").read_text().splitlines()]
    assert {r["output"] for r in rows} <= {"positive", "negative"} and all(r["valid"] for r in rows)
    assert {r["prediction"] for r in rows} <= {"0", "1"}


def test_a_random_t5_writes_no_labels_and_they_are_counted(t5_checkpoint, tmp_path: Path) -> None:
    checkpoint, data = t5_checkpoint
    cfg = finetune_cfg(
        data_dir=str(data), tasks=("SST-2",), batch_size=8, max_seq_len=64, lr=1e-9, max_steps=1
    )
    tuned = finetune(cfg, checkpoint, workdir=tmp_path, sink=MemorySink())
    summary = evaluate_checkpoint(
        EvalConfig(data_dir=str(data), tasks=("SST-2",), max_seq_len=64), tuned, workdir=tmp_path
    ).summary
    assert summary["SST-2/invalid_outputs"] == 64 and summary["SST-2/accuracy"] == 0.0, summary  # all wrong


def test_bert_only_settings_and_untextual_tasks_are_refused_before_training(t5_checkpoint, tmp_path) -> None:
    checkpoint, data = t5_checkpoint
    cfg = finetune_cfg(
        data_dir=str(data), tasks=("SST-2",), layer_lr_decay=0.8, freeze_encoder=True, max_steps=5
    )
    with pytest.raises(ValueError, match=r"finetune.layer_lr_decay, finetune.freeze_encoder: BERT-encoder"):
        finetune(cfg, checkpoint, workdir=tmp_path, sink=MemorySink())
    cfg = finetune_cfg(data_dir=str(data), tasks=("WikiANN-en",), max_steps=5)
    with pytest.raises(NoTextFormatError, match=r"'WikiANN-en' cannot be fine-tuned text-to-text"):
        finetune(cfg, checkpoint, workdir=tmp_path, sink=MemorySink())


def test_closed_book_inputs_hold_no_context(t5_checkpoint) -> None:
    checkpoint, _ = t5_checkpoint
    tokenizer = load_tokenizer(checkpoint.dir)
    spec = get_task("SQuAD")
    (open_book,), (closed,) = (encode_text_examples(tokenizer, spec, [SQUAD], 64, c) for c in (False, True))
    assert len(closed.input_ids) < len(open_book.input_ids) and closed.labels == open_book.labels
    assert tokenizer.decode(list(closed.input_ids[:-1])) == "question: what color ?"


def test_a_fine_tuned_t5_exports_and_transformers_writes_the_same_answers(t5_checkpoint, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from tasks.commands.export import export_checkpoint

    checkpoint, data = t5_checkpoint
    cfg = finetune_cfg(
        data_dir=str(data), tasks=("SST-2",), batch_size=16, max_seq_len=64, lr=1e-3, max_steps=40
    )
    tuned = finetune(cfg, checkpoint, workdir=tmp_path, sink=MemorySink())
    (hf_dir,) = export_checkpoint(tuned.dir, tmp_path / "hf")
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    ours = load_t5(tuned.dir).eval()
    tokenizer = load_tokenizer(tuned.dir)
    examples = [
        GlueExample(str(i), text, None, i % 2) for i, text in enumerate(("good film .", "bad plot dull ."))
    ]
    features = encode_text_examples(tokenizer, get_task("SST-2"), examples, 64)
    batch = collate_text(features)
    with torch.no_grad():
        logits, _ = ours(batch["input_ids"], batch["attention_mask"], batch["labels"])
        out = theirs(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        hf_ids = theirs.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 max_new_tokens=6, do_sample=False, num_beams=1, use_cache=False)  # fmt: skip
    assert (logits - out.logits).abs().max() <= 1e-4
    assert ours.generate(batch["input_ids"], batch["attention_mask"], 6).tolist() == hf_ids[:, 1:].tolist()


def test_frozen_shared_embedding_stays_as_pretrained_in_a_t5(t5_checkpoint, tmp_path: Path) -> None:
    checkpoint, data = t5_checkpoint
    cfg = finetune_cfg(data_dir=str(data), tasks=("SST-2",), batch_size=8, max_seq_len=64, max_steps=3,
                       freeze_embeddings=True)  # fmt: skip
    tuned = finetune(cfg, checkpoint, workdir=tmp_path, sink=MemorySink())
    before, after = read_weights(checkpoint.dir), read_weights(tuned.dir)
    assert torch.equal(after["embedding.weight"], before["embedding.weight"])
    assert not torch.equal(after["lm_head.weight"], before["lm_head.weight"])
