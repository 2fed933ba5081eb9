"""Pre-training stage on a tiny packed corpus built in the test (tokenizer trained in-test too)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from models.io import load_pretraining, read_config
from tasks.artifacts import Artifact
from tasks.engine.sink import MemorySink
from tasks.pretrain import PretrainConfig, pretrain

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SEQ_LEN = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and don't thrash when other test runs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def corpus(n: int, seed: int) -> list[str]:
    """Templated sentences: learnable structure, so MLM loss has somewhere to fall."""
    rng = np.random.default_rng(seed)
    subjects, verbs, objects = (
        ["the cat", "a dog", "my bird", "the fox"],
        ["sees", "eats", "likes"],
        ["fish", "seeds"],
    )
    colours = ["red", "blue"]
    return [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} . it is {rng.choice(colours)} ."
        for _ in range(n)
    ]


def write_tokenizer(dir: Path, texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=80, special_tokens=SPECIALS))
    dir.mkdir(parents=True)
    tok.save(str(dir / "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (dir / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
    (dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (dir / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[PAD]", "mask_token": "[MASK]"}))
    return tok


def pack_rows(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Greedy packing: [CLS] doc [SEP] doc [SEP] ... [PAD]*, one row per SEQ_LEN tokens."""
    rows, row = [], [2]
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        doc = [*enc.ids, 3]
        if len(row) + len(doc) > SEQ_LEN:
            rows.append(row + [0] * (SEQ_LEN - len(row)))
            row = [2]
        row += doc
    rows.append(row + [0] * (SEQ_LEN - len(row)))
    return np.array(rows, dtype=np.uint16)


def write_pack(dir: Path, tok: Tokenizer, vocab_size: int | None = None) -> None:
    dir.mkdir(parents=True)
    splits = {"train": pack_rows(tok, corpus(400, seed=0)), "validation": pack_rows(tok, corpus(60, seed=1))}
    for name, rows in splits.items():
        rows.tofile(dir / f"{name}.bin")
    meta = {"dtype": "uint16", "seq_len": SEQ_LEN, "vocab_size": vocab_size or tok.get_vocab_size()}
    meta |= {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}
    meta["splits"] = {name: len(rows) for name, rows in splits.items()}
    (dir / "pack.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Artifact]:
    root = tmp_path_factory.mktemp("pretrain-inputs")
    tok = write_tokenizer(root / "tokenizer", corpus(200, seed=2))
    write_pack(root / "packed", tok)
    return (
        Artifact(stage="pack", fingerprint="pack0", path=str(root / "packed")),
        Artifact(stage="tokenizer", fingerprint="tok0", path=str(root / "tokenizer")),
    )


CFG = PretrainConfig(
    hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, batch_size=16, lr=5e-3,
    max_steps=60, eval_every=20, eval_batches=2, checkpoint_every=20, log_every=10, device="cpu",
)  # fmt: skip


@pytest.fixture(scope="module")
def finished(inputs: tuple[Artifact, Artifact], tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("pretrain-run")
    sink = MemorySink()
    return pretrain(CFG, *inputs, workdir=workdir, sink=sink), sink, workdir


def test_pretraining_lowers_the_loss(finished) -> None:
    artifact, sink, _ = finished
    losses = [v for _, v in sink.series("loss")]
    val = sink.series("val_loss")
    assert len(losses) == 6 and losses[-1] < losses[0] - 1.0
    assert [s for s, _ in val] == [20, 40, 60] and val[-1][1] < val[0][1]
    summary = artifact.summary
    assert summary["steps"] == 60 and summary["tokens"] > 0 and summary["final_loss"] == losses[-1]
    assert summary["val_loss"] == val[-1][1]
    assert summary["val_perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
    assert 0.0 < summary["val_mlm_accuracy"] <= 1.0


def test_output_is_a_self_contained_checkpoint_dir(finished) -> None:
    artifact, _, workdir = finished
    names = {p.name for p in artifact.dir.iterdir()}
    expected = {"model.safetensors", "config.json", "metrics.json", "tokenizer.json", "vocab.txt"}
    assert expected | {"tokenizer_config.json", "special_tokens_map.json"} <= names
    model = load_pretraining(artifact.dir)
    assert (
        model.cfg.hidden_size == 32
        and model.cfg.vocab_size == Tokenizer.from_file(str(artifact.file("tokenizer.json"))).get_vocab_size()
    )
    assert read_config(artifact.dir)["pretrain"]["max_steps"] == 60
    assert json.loads(artifact.file("metrics.json").read_text()) == artifact.summary
    assert not list(Path(workdir, "pretrain").glob("*.ckpt"))  # resumable state removed when done


def test_finished_stage_is_reused(finished, inputs: tuple[Artifact, Artifact]) -> None:
    artifact, _, workdir = finished
    again = pretrain(CFG, *inputs, workdir=workdir, sink=MemorySink())
    assert again.cached and again.path == artifact.path


class KillAt(MemorySink):
    """Dies like a killed process when a given step is logged."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def log_metrics(self, metrics, step: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt("simulated kill")
        super().log_metrics(metrics, step)


def test_killed_stage_resumes_to_the_same_weights(finished, inputs, tmp_path: Path) -> None:
    artifact, _, _ = finished
    with pytest.raises(KeyboardInterrupt):
        pretrain(CFG, *inputs, workdir=tmp_path, sink=KillAt(30))  # after the step-20 checkpoint
    assert len(list((tmp_path / "pretrain").glob("*.ckpt"))) == 1
    sink = MemorySink()
    resumed = pretrain(CFG, *inputs, workdir=tmp_path, sink=sink)
    assert sink.series("loss")[0][0] == 30  # continued from step 20, not from scratch
    a, b = (
        load_file(str(artifact.file("model.safetensors"))),
        load_file(str(resumed.file("model.safetensors"))),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vocabulary_mismatch_is_rejected(inputs: tuple[Artifact, Artifact], tmp_path: Path) -> None:
    _, tokenizer = inputs
    write_pack(
        tmp_path / "packed", Tokenizer.from_file(str(tokenizer.file("tokenizer.json"))), vocab_size=500
    )
    packed = Artifact(stage="pack", fingerprint="bad", path=str(tmp_path / "packed"))
    with pytest.raises(ValueError, match="vocab_size=500"):
        pretrain(CFG, packed, tokenizer, workdir=tmp_path, sink=MemorySink())


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        PretrainConfig(hidden=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="size"):
        PretrainConfig(size="giant")  # type: ignore[arg-type]
