"""Pack: the packed files re-read to exactly the tokenizer's ids, split by document, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from tasks.data.corpus.shards import iter_doc_batches
from tasks.data.ingest import IngestConfig, ingest
from tasks.data.pack import PackConfig, open_split, pack, split_of
from tasks.data.tokenizer import CLS_ID, PAD_ID, SEP_ID, TokenizerConfig, load_tokenizer, train_tokenizer
from tasks.sink import MemorySink
from tasks.store.artifact import Artifact

WORDS = [
    "the",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "a",
    "mat",
    "tree",
    "house",
    "river",
    "quickly",
    "slowly",
    "big",
    "small",
    "red",
    "blue",
]


@pytest.fixture()
def stages(tmp_path: Path) -> tuple[Artifact, Artifact]:
    """A 40-document corpus of 3..40 words (some longer than one row) and a tokenizer trained on it."""
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, int(rng.integers(3, 40)))) for _ in range(40)]
    (tmp_path / "c.txt").write_text("\n".join(lines))
    cfg = IngestConfig(paths=(str(tmp_path / "c.txt"),), txt_mode="lines", min_chars=1)
    docs = ingest(cfg, workdir=tmp_path / "w", sink=MemorySink())
    tok = train_tokenizer(
        TokenizerConfig(vocab_size=100, min_frequency=1), docs, workdir=tmp_path / "w", sink=MemorySink()
    )
    return docs, tok


def expected_docs(docs: Artifact, tok: Artifact, cfg: PackConfig) -> dict[str, list[list[int]]]:
    """Token ids (no specials) of each split's documents, in corpus order, straight from the tokenizer."""
    tokenizer = load_tokenizer(tok.dir)
    out: dict[str, list[list[int]]] = {"train": [], "validation": []}
    for ids, texts in iter_doc_batches(docs.dir):
        for doc_id, text in zip(ids, texts, strict=True):
            split = split_of(doc_id, cfg.seed, cfg.validation_fraction)
            out[split].append(tokenizer.encode(text, add_special_tokens=False).ids)
    return out


def test_pack_mode_rereads_to_tokenizer_ids(tmp_path: Path, stages: tuple[Artifact, Artifact]) -> None:
    docs, tok = stages
    cfg = PackConfig(seq_len=16, validation_fraction=0.3, batch_docs=7)
    art = pack(cfg, docs, tok, workdir=tmp_path / "w", sink=MemorySink())
    expected = expected_docs(docs, tok, cfg)
    assert len(expected["validation"]) > 0 and len(expected["train"]) > 0
    for split, doc_ids in expected.items():
        rows = open_split(art.dir, split)  # (n_rows, 16)
        assert rows.dtype == np.uint16 and rows.shape[1] == 16
        assert (rows[:, 0] == CLS_ID).all()
        assert not (rows[:-1] == PAD_ID).any()  # only the last row is padded
        stream = [t for row in rows for t in row[1:].tolist() if t != PAD_ID]
        assert stream == [t for ids in doc_ids for t in [*ids, SEP_ID]]  # every document ends with [SEP]
    assert art.summary["docs"] == {s: len(d) for s, d in expected.items()}


def test_single_mode_one_document_per_row(tmp_path: Path, stages: tuple[Artifact, Artifact]) -> None:
    docs, tok = stages
    cfg = PackConfig(seq_len=12, mode="single", validation_fraction=0.0)
    art = pack(cfg, docs, tok, workdir=tmp_path / "w", sink=MemorySink())
    rows = open_split(art.dir, "train")
    pieces = []
    for row in rows.tolist():
        body = [t for t in row if t != PAD_ID]
        assert body[0] == CLS_ID and body[-1] == SEP_ID and SEP_ID not in body[1:-1]
        assert row[len(body) :] == [PAD_ID] * (12 - len(body))  # padding only at the tail
        pieces.append(body[1:-1])
    expected = expected_docs(docs, tok, cfg)["train"]
    split_docs = [ids[i : i + 10] for ids in expected for i in range(0, len(ids), 10)]  # long docs -> rows
    assert pieces == split_docs
    assert len(rows) > len(expected)  # some documents were longer than a row
    assert open_split(art.dir, "validation").shape == (0, 12)
    pad_fraction = float((rows == PAD_ID).mean())
    assert art.summary["padding_fraction"]["train"] == pytest.approx(pad_fraction)


def test_pack_json_and_files(tmp_path: Path, stages: tuple[Artifact, Artifact]) -> None:
    docs, tok = stages
    art = pack(
        PackConfig(seq_len=16, validation_fraction=0.3), docs, tok, workdir=tmp_path / "w", sink=MemorySink()
    )
    meta = json.loads(art.file("pack.json").read_text())
    vocab = load_tokenizer(tok.dir).get_vocab_size()
    assert {
        k: meta[k]
        for k in ("dtype", "seq_len", "vocab_size", "pad_id", "unk_id", "cls_id", "sep_id", "mask_id")
    } == {
        "dtype": "uint16",
        "seq_len": 16,
        "vocab_size": vocab,
        "pad_id": 0,
        "unk_id": 1,
        "cls_id": 2,
        "sep_id": 3,
        "mask_id": 4,
    }
    assert vocab % 64 == 0  # the tokenizer pads its vocabulary; pack.json reports the padded size
    for split, n_rows in meta["splits"].items():
        assert art.file(f"{split}.bin").stat().st_size == n_rows * 16 * 2
    assert not art.file("tokenizer.json").exists()


def test_split_is_disjoint_deterministic_and_seeded() -> None:
    ids = [f"doc:{i}" for i in range(2000)]
    splits = [split_of(i, 0, 0.1) for i in ids]
    assert splits == [split_of(i, 0, 0.1) for i in ids]
    assert 0.07 < splits.count("validation") / len(ids) < 0.13
    assert splits != [split_of(i, 1, 0.1) for i in ids]
    assert all(split_of(i, 0, 0.0) == "train" for i in ids)


def test_large_vocab_uses_int32(tmp_path: Path, stages: tuple[Artifact, Artifact]) -> None:
    docs, _ = stages
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    vocab |= {f"filler{i}": len(vocab) + i for i in range(70_000)}
    big = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "bigtok").mkdir()
    big.save(str(tmp_path / "bigtok" / "tokenizer.json"))
    tok = Artifact(stage="tokenizer", fingerprint="big", path=str(tmp_path / "bigtok"))
    art = pack(
        PackConfig(seq_len=16, validation_fraction=0.0), docs, tok, workdir=tmp_path / "w", sink=MemorySink()
    )
    rows = open_split(art.dir, "train")
    assert rows.dtype == np.int32 and (rows[:, 0] == CLS_ID).all()


def test_rerun_is_cached(tmp_path: Path, stages: tuple[Artifact, Artifact]) -> None:
    docs, tok = stages
    sink = MemorySink()
    first = pack(PackConfig(seq_len=16), docs, tok, workdir=tmp_path / "w", sink=sink)
    second = pack(PackConfig(seq_len=16), docs, tok, workdir=tmp_path / "w", sink=sink)
    assert second.cached and not first.cached and second.path == first.path and len(sink.history) == 1
