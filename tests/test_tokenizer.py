"""Tokenizer: fixed special ids, round trips, BERT templates, saved HF files, caching."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from tasks.data.corpus.sampling import sample_rows
from tasks.data.ingest import IngestConfig, ingest
from tasks.data.tokenizer import (
    SPECIAL_TOKENS,
    UNIGRAM_IS_NOT_REPRODUCIBLE,
    TokenizerConfig,
    load_tokenizer,
    pad_vocab,
    train_tokenizer,
)
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


RUNES = " ".join(chr(c) for c in range(0x16A0, 0x16C8))  # 40 letters, once each: tied at any cut


def corpus(tmp_path: Path, n_docs: int = 60, extra: str = "") -> Artifact:
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 25)) + "." for _ in range(n_docs)]
    lines.append("Café Zürich Naïve Ünïcode")
    lines += [extra] if extra else []
    (tmp_path / "c.txt").write_text("\n".join(lines))
    cfg = IngestConfig(paths=(str(tmp_path / "c.txt"),), txt_mode="lines", min_chars=1)
    return ingest(cfg, workdir=tmp_path / "w", sink=MemorySink())


def train(tmp_path: Path, docs: Artifact, **kwargs: object) -> Artifact:
    cfg = TokenizerConfig(vocab_size=150, min_frequency=1, **kwargs)
    return train_tokenizer(cfg, docs, workdir=tmp_path / "w", sink=MemorySink())


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe"])
def test_special_ids_and_round_trip(tmp_path: Path, algorithm: str) -> None:
    art = train(tmp_path, corpus(tmp_path), algorithm=algorithm)
    tok = load_tokenizer(art.dir)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    text = "the big red dog ran quickly under a blue tree."
    enc = tok.encode(text, add_special_tokens=False)
    assert tok.decode(enc.ids) == text
    assert tok.encode("The  BIG dog").tokens == ["[CLS]", "the", "big", "dog", "[SEP]"]
    assert art.summary["vocab_size"] == tok.get_vocab_size() and art.summary["trained_vocab_size"] <= 150


def test_pair_template_type_ids(tmp_path: Path) -> None:
    tok = load_tokenizer(train(tmp_path, corpus(tmp_path)).dir)
    enc = tok.encode("the cat", "a dog")
    assert enc.tokens == ["[CLS]", "the", "cat", "[SEP]", "a", "dog", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 1, 1, 1]


def test_normalization_follows_config(tmp_path: Path) -> None:
    docs = corpus(tmp_path)
    uncased = load_tokenizer(train(tmp_path, docs).dir)
    assert uncased.normalizer.normalize_str("Café Zürich") == "cafe zurich"
    cased = load_tokenizer(train(tmp_path, docs, lowercase=False).dir)
    assert cased.normalizer.normalize_str("Café Zürich") == "Café Zürich"


def test_saved_hf_files(tmp_path: Path) -> None:
    art = train(tmp_path, corpus(tmp_path), model_max_length=128)
    vocab = art.file("vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == list(SPECIAL_TOKENS)
    tok = load_tokenizer(art.dir)
    assert all(tok.token_to_id(t) == i for i, t in enumerate(vocab))
    hf_cfg = json.loads(art.file("tokenizer_config.json").read_text())
    assert hf_cfg["tokenizer_class"] == "BertTokenizerFast" and hf_cfg["do_lower_case"] is True
    assert hf_cfg["model_max_length"] == 128
    special = json.loads(art.file("special_tokens_map.json").read_text())
    assert special == {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }


def test_transformers_loads_same_ids(tmp_path: Path) -> None:
    from transformers import BertTokenizerFast

    art = train(tmp_path, corpus(tmp_path))
    hf = BertTokenizerFast.from_pretrained(str(art.dir))
    ours = load_tokenizer(art.dir).encode("the cat sat", "on a mat")
    theirs = hf("the cat sat", "on a mat")
    assert theirs["input_ids"] == ours.ids and theirs["token_type_ids"] == ours.type_ids
    assert hf.mask_token_id == 4 and hf.pad_token_id == 0


def test_unigram_round_trip_and_its_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tasks.data.tokenizer"):
        tok = load_tokenizer(train(tmp_path, corpus(tmp_path), algorithm="unigram").dir)
    assert UNIGRAM_IS_NOT_REPRODUCIBLE in caplog.text  # the user learns why a rebuild differs
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    text = "the big red dog ran under a blue tree."
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)
    vocab = {"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"special token \[PAD\] has id 1, expected 0"):
        load_tokenizer(tmp_path)


def test_rerun_is_cached(tmp_path: Path) -> None:
    docs = corpus(tmp_path)
    first = train(tmp_path, docs)
    second = train(tmp_path, docs)
    assert second.cached and not first.cached and second.path == first.path


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe", "unigram"])
def test_vocab_padded_to_multiple_of_64_with_unused_tokens(tmp_path: Path, algorithm: str) -> None:
    docs = corpus(tmp_path)
    art = train(tmp_path, docs, algorithm=algorithm)
    assert load_tokenizer(art.dir).get_vocab_size() % 64 == 0 == art.summary["vocab_size"] % 64
    unpadded = load_tokenizer(train(tmp_path, docs, algorithm=algorithm, pad_vocab_multiple=1).dir)
    trained = unpadded.get_vocab_size()
    tok = pad_vocab(unpadded, 64)
    size = tok.get_vocab_size()
    assert size % 64 == 0 and 0 < size - trained < 64
    assert [tok.id_to_token(i) for i in range(trained, size)] == [
        f"[unused{i}]" for i in range(size - trained)
    ]
    assert all(tok.id_to_token(i) == unpadded.id_to_token(i) for i in range(trained))  # trained ids kept
    text = "the big red dog ran under a blue tree. Zürich [x]"
    assert tok.encode(text).ids == unpadded.encode(text).ids  # padding changes no encoding
    if algorithm != "unigram":  # (a unigram vocabulary entry can match a literal "[unused0]")
        assert max(tok.encode("[unused0] [unused1]").ids) < trained
    assert pad_vocab(tok, 64).get_vocab_size() == size


TRAIN_IN_A_FRESH_PROCESS = """
import sys
from pathlib import Path
from tasks.data.tokenizer import TokenizerConfig, train_tokenizer
from tasks.store.artifact import Artifact
docs = Artifact(stage="dedup", fingerprint="docs", path=sys.argv[1])
size, algorithm, limit, family = int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
cfg = TokenizerConfig(
    vocab_size=size, min_frequency=1, algorithm=algorithm, limit_alphabet=limit, family=family
)
print((train_tokenizer(cfg, docs, workdir=sys.argv[2]).dir / "tokenizer.json").read_text())
"""


@pytest.mark.parametrize(
    ("algorithm", "limit_alphabet", "family"),
    [("wordpiece", 1000, "bert"), ("bpe", 1000, "bert"), ("wordpiece", 30, "bert"), ("bpe", 30, "t5")],
)
def test_same_corpus_same_vocabulary_in_every_process(
    tmp_path: Path, algorithm: str, limit_alphabet: int, family: str
) -> None:
    """The tokenizers trainer orders merges of equal count, and the characters tied at its
    ``limit_alphabet`` cut, by hash-map order, which changes per process (huggingface/tokenizers#1794);
    our training must not: a re-run after a crash gets the same tokenizer. With limit 30 the cut
    falls among the 40 runes seen once each. T5's SentencePiece-style BPE (the t5 presets') too;
    Unigram is not reproducible (see TokenizerConfig.algorithm), so it is not listed."""
    import subprocess
    import sys

    docs = corpus(tmp_path, n_docs=200, extra=RUNES)
    runs = [
        subprocess.run([sys.executable, "-c", TRAIN_IN_A_FRESH_PROCESS, docs.path, str(tmp_path / f"w{i}"),
                        "300" if family == "t5" else "120", algorithm, str(limit_alphabet), family],
                       capture_output=True, text=True, check=True).stdout
        for i in range(4)
    ]  # fmt: skip
    assert len(set(runs)) == 1
    saved = json.loads(runs[0])
    assert len(saved["model"]["vocab"]) >= 120
    assert all(rune in saved["model"]["vocab"] for rune in RUNES.split())  # ties at the cut: all kept
    assert all(not t["content"].startswith("##") for t in saved["added_tokens"])  # ordinary pieces


def test_max_docs_is_a_seeded_sample_spread_over_the_corpus(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"document {i} says alpha beta gamma"}) + "\n" for i in range(400))
    )
    cfg = IngestConfig(paths=(str(path),), min_chars=1, min_alpha_fraction=0.0, shard_docs=100)
    docs = ingest(cfg, workdir=tmp_path / "w", sink=MemorySink())
    sample, size = sample_rows(docs.dir, 60, seed=0)
    assert size == sum(len(s.rows) for s in sample) and 55 <= size <= 60
    assert all(len(s.rows) > 0 for s in sample)  # every shard contributes, not only the first
    again, _ = sample_rows(docs.dir, 60, seed=0)
    other, _ = sample_rows(docs.dir, 60, seed=1)
    assert [s.rows.tolist() for s in again] == [s.rows.tolist() for s in sample]
    assert [s.rows.tolist() for s in other] != [s.rows.tolist() for s in sample]
    everything, total = sample_rows(docs.dir, 400, seed=0)
    assert total == 400 and all(s.rows is None for s in everything)
    art = train(tmp_path, docs, max_docs=60)
    assert art.summary["docs"] == size


def test_t5_demo_tokenizer_keeps_every_made_up_word_whole(tmp_path: Path) -> None:
    """The t5-tiny preset's BPE spells each word of the demo lexicon as one piece; Unigram would not.

    tokenizers' Unigram trainer seeds only substrings that occur with two different continuations,
    and on the demo corpus (punctuation set apart, no word a prefix of another) a whole made-up word
    never has two, so it is spelt in pieces. The demo's transfer hinges on whole words
    (BENCHMARKS.md "T5 demo"); if a tokenizers release changes that, the preset's choice is worth
    revisiting, and this test says so.
    """
    from demo_runs import demo_documents

    from tasks.run.config import load_config

    cfg = load_config("t5-tiny", tmp_path)
    demo, docs = demo_documents(cfg, tmp_path)
    classes = json.loads((demo.dir / "lexicon.json").read_text())["classes"]
    words = sorted({w for c in classes.values() for w in (*c["visible"], *c["heldout"])})
    pieces = {}
    for algorithm in ("bpe", "unigram"):
        tok_cfg = cfg.tokenizer.model_copy(update={"algorithm": algorithm})
        tok = load_tokenizer(train_tokenizer(tok_cfg, docs, workdir=tmp_path, sink=MemorySink()).dir)
        pieces[algorithm] = [len(tok.encode(w, add_special_tokens=False).ids) for w in words]
    assert cfg.tokenizer.algorithm == "bpe" and len(words) > 100
    assert set(pieces["bpe"]) == {1}
    assert min(pieces["unigram"]) >= 2  # every made-up word split


@pytest.mark.parametrize("algorithm", ["bpe", "unigram"])
def test_t5_tokenizers_spell_text_targets_back_exactly(tmp_path: Path, algorithm: str) -> None:
    """T5 is scored on decoded text: class words, scores and prompts must come back exactly."""
    cfg = TokenizerConfig(family="t5", algorithm=algorithm, vocab_size=320, min_frequency=1)
    art = train_tokenizer(cfg, corpus(tmp_path), workdir=tmp_path / "w", sink=MemorySink())
    tok = load_tokenizer(art.dir)
    for text in ("not_equivalent", "3.8", "stsb sentence1: the cat. sentence2: a dog!", "(a) [b] 4-2=2?"):
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
    assert tok.encode("the cat").tokens == ["▁the", "▁cat", "</s>"]


def test_t5_wordpiece_is_refused_because_it_cannot_spell_targets_back() -> None:
    with pytest.raises(ValueError, match="'not _ equivalent'"):
        TokenizerConfig(family="t5", algorithm="wordpiece")
