"""Synthetic demo data: exact file formats, determinism, held-out words in dev, planted duplicates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tasks.demo.corpus import shingle_jaccard
from tasks.demo.generate import DemoDataError, generate_demo_data
from tasks.demo.lexicon import MOODS, NOUN_HYPERNYMS, LexiconSpec, Split, WordClass
from tasks.demo.tasks import MRPC_HEADER, STSB_HEADER

SMALL = {
    "n_corpus_docs": 300,
    "n_train": 60,
    "n_dev": 40,
    "n_exact_dups": 3,
    "n_near_dups": 4,
    "docs_per_shard": 128,
}


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read like the GLUE loaders do: tab-separated, no quoting; every row as wide as the header."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    assert all(len(r) == len(header) for r in body), path
    return header, body


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo_data(out, seed=7, **SMALL)
    return out


def lexicon(root: Path) -> dict[str, dict[str, list[str]]]:
    return json.loads((root / "lexicon.json").read_text())["classes"]


def squad_questions(path: Path) -> list[tuple[str, dict]]:
    data = json.loads(path.read_text())
    assert data["version"] == "1.1"
    return [(p["context"], qa) for art in data["data"] for p in art["paragraphs"] for qa in p["qas"]]


def test_glue_files_parse_in_original_formats(demo: Path) -> None:
    glue = demo / "data" / "glue"
    for split, n in (("train", SMALL["n_train"]), ("dev", SMALL["n_dev"])):
        header, rows = read_tsv(glue / "SST-2" / f"{split}.tsv")
        assert header == ["sentence", "label"] and len(rows) == n
        assert {r[1] for r in rows} == {"0", "1"}
        header, rows = read_tsv(glue / "MRPC" / f"{split}.tsv")
        assert tuple(header) == MRPC_HEADER and len(rows) == n
        assert {r[0] for r in rows} == {"0", "1"} and all(r[1].isdigit() and r[2].isdigit() for r in rows)
        header, rows = read_tsv(glue / "STS-B" / f"{split}.tsv")
        assert tuple(header) == STSB_HEADER and len(rows) == n
        scores = [float(r[9]) for r in rows]
        assert min(scores) >= 0.0 and max(scores) <= 5.0 and len(set(scores)) > 3


def test_stsb_header_is_the_official_glue_header() -> None:
    """The demo's STS-B files carry the 10-column header of the official GLUE release."""
    official = ["index", "genre", "filename", "year", "old_index", "source1", "source2"]
    official += ["sentence1", "sentence2", "score"]
    assert list(STSB_HEADER) == official


def test_squad_answers_sit_at_their_offsets(demo: Path) -> None:
    for split, n in (("train", SMALL["n_train"]), ("dev", SMALL["n_dev"])):
        questions = squad_questions(demo / "data" / "squad" / f"{split}.json")
        assert len(questions) == n
        assert len({qa["id"] for _, qa in questions}) == n
        for context, qa in questions:
            (answer,) = qa["answers"]
            start = answer["answer_start"]
            assert context[start : start + len(answer["text"])] == answer["text"]
            assert context.split().count(answer["text"]) == 1  # the span is unambiguous


def test_corpus_shards_and_planted_duplicates(demo: Path) -> None:
    records = [json.loads(line) for p in sorted((demo / "corpus").glob("part-*.jsonl")) for line in p.open()]
    planted = json.loads((demo / "planted.json").read_text())
    assert len(list((demo / "corpus").glob("part-*.jsonl"))) == 3  # 307 docs / 128 per shard
    assert len(records) == planted["n_docs"] == SMALL["n_corpus_docs"] + 7
    text = {r["id"]: r["text"] for r in records}
    assert len(text) == len(records)  # ids unique
    assert len(planted["exact"]) == 3 and len(planted["near"]) == 4
    for dup in planted["exact"]:
        assert text[dup["id"]] == text[dup["copy_of"]]
    for dup in planted["near"]:
        assert text[dup["id"]] != text[dup["copy_of"]]
        assert shingle_jaccard(text[dup["id"]], text[dup["copy_of"]]) > 0.85
    planted_ids = {d["id"] for d in planted["exact"] + planted["near"]}
    originals = [t for i, t in text.items() if i not in planted_ids]
    assert len(set(originals)) == len(originals)  # no accidental exact duplicates


def test_text_is_safe_for_unquoted_tsv(demo: Path) -> None:
    for path in (demo / "data").rglob("*.tsv"):
        assert not set('"\r') & set(path.read_text(encoding="utf-8")), path
    for path in (demo / "corpus").glob("part-*.jsonl"):
        for line in path.open(encoding="utf-8"):
            assert not set('"\t\n\r') & set(json.loads(line)["text"]), path


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, demo: Path) -> None:
    generate_demo_data(tmp_path / "again", seed=7, **SMALL)
    generate_demo_data(tmp_path / "other", seed=8, **SMALL)
    files = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file()
    )
    for rel in files:
        assert (demo / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    assert (demo / "data/glue/SST-2/dev.tsv").read_bytes() != (
        tmp_path / "other/data/glue/SST-2/dev.tsv"
    ).read_bytes()


def content_words(root: Path, split: str) -> list[str]:
    """Made-up words used by every downstream file of one split."""
    classed = {w for c in lexicon(root).values() for w in c["visible"] + c["heldout"]}
    glue = root / "data" / "glue"
    texts = [r[0] for r in read_tsv(glue / "SST-2" / f"{split}.tsv")[1]]
    texts += [t for r in read_tsv(glue / "MRPC" / f"{split}.tsv")[1] for t in r[3:]]
    texts += [t for r in read_tsv(glue / "STS-B" / f"{split}.tsv")[1] for t in r[7:9]]
    texts += [
        c + " " + qa["question"] for c, qa in squad_questions(root / "data" / "squad" / f"{split}.json")
    ]
    return [w for t in texts for w in t.split() if w in classed]


def test_train_never_uses_heldout_words_and_dev_mostly_does(demo: Path) -> None:
    heldout = {w for c in lexicon(demo).values() for w in c["heldout"]}
    train, dev = content_words(demo, "train"), content_words(demo, "dev")
    assert not heldout & set(train)
    share = np.mean([w in heldout for w in dev])
    assert 0.8 < share < 0.97  # default dev_heldout_prob=0.9 (a few slots fall back to visible words)


def test_corpus_uses_every_word(demo: Path) -> None:
    docs = [json.loads(line)["text"] for p in (demo / "corpus").glob("part-*.jsonl") for line in p.open()]
    words = {w for text in docs for w in text.split()}
    vocab = {w for c in lexicon(demo).values() for w in c["visible"] + c["heldout"]}
    assert vocab <= words


def test_every_downstream_token_occurs_in_corpus(demo: Path) -> None:
    """A tokenizer trained on the corpus must know every word of the fine-tuning files."""
    docs = [json.loads(line)["text"] for p in (demo / "corpus").glob("part-*.jsonl") for line in p.open()]
    corpus_words = {w for text in docs for w in text.split()}
    glue = demo / "data" / "glue"
    texts = [r[0] for s in ("train", "dev") for r in read_tsv(glue / "SST-2" / f"{s}.tsv")[1]]
    texts += [t for s in ("train", "dev") for r in read_tsv(glue / "MRPC" / f"{s}.tsv")[1] for t in r[3:]]
    for s in ("train", "dev"):
        texts += [
            c + " " + qa["question"] for c, qa in squad_questions(demo / "data" / "squad" / f"{s}.json")
        ]
    assert {w for t in texts for w in t.split()} - corpus_words == set()


def test_sst2_label_is_polarity_of_sentiment_words(demo: Path) -> None:
    classes = lexicon(demo)
    polarity = {w: 1 for w in classes["positive"]["visible"] + classes["positive"]["heldout"]}
    polarity |= {w: 0 for w in classes["negative"]["visible"] + classes["negative"]["heldout"]}
    for split in ("train", "dev"):
        for sentence, label in read_tsv(demo / "data/glue/SST-2" / f"{split}.tsv")[1]:
            assert {polarity[w] for w in sentence.split() if w in polarity} == {int(label)}


def test_cue_words_next_to_class_words_reveal_every_class(demo: Path) -> None:
    """The first-order signal masked-LM needs: counting which cue word of its kind shares a sentence with
    a made-up word recovers its class, for every sentiment adjective (among the moods) and every noun
    (among the hypernyms), held-out words included. A noun also meets moods, at random polarity: that
    is noise of the other kind, not a rival class."""
    classes = lexicon(demo)
    nouns = sorted(name for name in classes if name.startswith("noun"))
    families = {
        "sentiment": {m: pol for pol, moods in MOODS.items() for m in moods},
        "noun": {NOUN_HYPERNYMS[i]: name for i, name in enumerate(nouns)},
    }
    counts: dict[str, dict[str, dict[str, int]]] = {family: {} for family in families}
    for path in (demo / "corpus").glob("part-*.jsonl"):
        for line in path.open(encoding="utf-8"):
            for sentence in json.loads(line)["text"].split(" . "):
                tokens = sentence.split()
                for family, cue_of in families.items():
                    cues = [cue_of[t] for t in tokens if t in cue_of]
                    for word in tokens:
                        for cue in cues:
                            per_word = counts[family].setdefault(word, {})
                            per_word[cue] = per_word.get(cue, 0) + 1
    for family, names in (("sentiment", ("positive", "negative")), ("noun", nouns)):
        for name in names:
            for word in classes[name]["visible"] + classes[name]["heldout"]:
                seen = counts[family][word]
                assert max(seen, key=seen.get) == name, (word, seen)


def test_split_draw_respects_parts() -> None:
    wc = WordClass("c", ("a", "b"), ("x", "y"))
    rng = np.random.default_rng(0)
    assert {Split("train").draw(wc, rng) for _ in range(50)} == {"a", "b"}
    assert {Split("dev", 1.0).draw(wc, rng) for _ in range(50)} == {"x", "y"}
    assert Split("dev", 1.0).draw(wc, rng, frozenset({"x", "y"})) in {"a", "b"}  # falls back, never fails
    with pytest.raises(DemoDataError, match="no train word"):
        Split("train").draw(wc, rng, frozenset({"a", "b"}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heldout_frac": 1.0}, "heldout_frac"),
        ({"n_train": 0}, "sizes"),
        ({"label_noise": 0.7}, "label_noise"),
        ({"lexicon": LexiconSpec(cluster_size=3)}, "cluster_size"),
        ({"lexicon": LexiconSpec(n_colors=4)}, "3 visible"),
        ({"lexicon": LexiconSpec(n_noun_clusters=len(NOUN_HYPERNYMS) + 1)}, "n_noun_clusters"),
        ({"n_corpus_docs": 5, "n_exact_dups": 20}, "cannot plant"),
    ],
)
def test_bad_knobs_raise(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DemoDataError, match=match):
        generate_demo_data(tmp_path, **({"n_corpus_docs": 50, "n_train": 5, "n_dev": 5} | kwargs))


def sentence_cooccurrence_vectors(corpus_dir: Path, k: int = 32) -> dict[str, np.ndarray]:
    """PPMI of same-sentence co-occurrence, reduced by SVD: a non-neural stand-in for pre-training.

    Sentences, not documents: polarity is drawn per sentence, so a document mixes both moods."""
    texts = [json.loads(line)["text"] for p in corpus_dir.glob("part-*.jsonl") for line in p.open()]
    docs = [sentence.split() for text in texts for sentence in text.split(" . ")]
    vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    counts = np.zeros((len(vocab), len(vocab)))  # (V, V) sentences holding both words
    for doc in docs:
        ids = np.array(sorted({vocab[w] for w in doc}))
        counts[np.ix_(ids, ids)] += 1
    pmi = np.log(counts * counts.sum() / np.outer(counts.sum(1), counts.sum(0)) + 1e-12)
    u, s, _ = np.linalg.svd(np.maximum(pmi, 0.0))
    vectors = u[:, :k] * np.sqrt(s[:k])  # (V, k)
    return {w: vectors[i] for w, i in vocab.items()}


@pytest.mark.slow
def test_corpus_carries_the_signal_the_train_set_lacks(tmp_path: Path) -> None:
    """SST-2-like dev: corpus vectors + logistic regression beat bag-of-words fitted on train alone."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    generate_demo_data(tmp_path, seed=3, n_corpus_docs=1500, n_train=300, n_dev=200)
    vectors = sentence_cooccurrence_vectors(tmp_path / "corpus")
    train, dev = (read_tsv(tmp_path / f"data/glue/SST-2/{s}.tsv")[1] for s in ("train", "dev"))
    y_train, y_dev = [int(r[1]) for r in train], [int(r[1]) for r in dev]

    def pooled(rows: list[list[str]]) -> np.ndarray:
        return np.array([np.mean([vectors[w] for w in r[0].split()], axis=0) for r in rows])

    corpus_acc = LogisticRegression(C=10, max_iter=2000).fit(pooled(train), y_train).score(pooled(dev), y_dev)
    bow = CountVectorizer(token_pattern=r"\S+").fit([r[0] for r in train])
    bow_clf = LogisticRegression(C=10, max_iter=2000).fit(bow.transform([r[0] for r in train]), y_train)
    bow_acc = bow_clf.score(bow.transform([r[0] for r in dev]), y_dev)
    assert corpus_acc > 0.9 and bow_acc < 0.7, (corpus_acc, bow_acc)
