"""Dedup: MinHash accuracy, LSH banding, and planted exact / near duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.artifacts import Artifact
from tasks.corpus.minhash import (
    MinHasher,
    candidate_pairs,
    cluster_roots,
    jaccard_estimate,
    recall_bands,
    shingle_batch,
    shingle_hashes,
)
from tasks.corpus.shards import iter_doc_batches
from tasks.dedup import DedupConfig, dedup
from tasks.engine.sink import MemorySink
from tasks.ingest import IngestConfig, ingest

VOCAB = [f"w{i}" for i in range(3000)]


def random_words(rng: np.random.Generator, n: int) -> list[str]:
    return [str(w) for w in rng.choice(VOCAB, n)]


def edit(words: list[str], positions: list[int]) -> list[str]:
    out = list(words)
    for p in positions:
        out[p] = "edited"
    return out


def ingest_texts(tmp_path: Path, texts: list[str]) -> Artifact:
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return ingest(
        IngestConfig(paths=(str(path),), min_chars=1, min_alpha_fraction=0.0),
        workdir=tmp_path / "w",
        sink=MemorySink(),
    )


def true_jaccard(a: str, b: str, ngram: int = 5) -> float:
    sa, sb = set(shingle_hashes(a, ngram).tolist()), set(shingle_hashes(b, ngram).tolist())
    return len(sa & sb) / len(sa | sb)


def test_minhash_estimate_close_to_true_jaccard() -> None:
    rng = np.random.default_rng(0)
    base = random_words(rng, 200)
    hasher = MinHasher(256, 5, np.random.default_rng(1))
    for n_edits in (2, 10, 40, 120):
        other = edit(base, list(range(0, 200, 200 // n_edits))[:n_edits])
        a, b = " ".join(base), " ".join(other)
        sig = hasher.signatures([a, b])  # (2, 256)
        assert sig.dtype == np.uint32 and sig.shape == (2, 256)
        assert abs(float(jaccard_estimate(sig[0], sig[1])) - true_jaccard(a, b)) < 0.08


def test_shingles_of_short_and_empty_texts() -> None:
    assert shingle_hashes("", 5).size == 0
    assert shingle_hashes("two words", 5).size == 1  # shorter than ngram: one shingle of all words
    assert shingle_hashes("a b c d e f", 5).size == 2


def test_recall_bands_keep_pairs_at_threshold() -> None:
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = recall_bands(threshold, 128, 0.99)
        assert bands * rows <= 128 and 1 - (1 - threshold**rows) ** bands >= 0.99
        more_rows = 128 // (rows + 1)  # one more row per band would drop below the recall target
        assert 1 - (1 - threshold ** (rows + 1)) ** more_rows < 0.99
    assert recall_bands(0.8, 128, 0.99) == (21, 6)


def test_candidate_pairs_and_clusters() -> None:
    sigs = np.array([[1, 2, 3, 4], [9, 9, 3, 4], [1, 2, 7, 7], [5, 6, 7, 8], [0, 0, 0, 0]], dtype=np.uint32)
    pairs = candidate_pairs(sigs, bands=2, rows=2)
    assert pairs.tolist() == [[0, 1], [0, 2]]
    assert cluster_roots(5, pairs).tolist() == [0, 0, 0, 3, 4]
    assert cluster_roots(3, np.array([[1, 2]])).tolist() == [0, 1, 1]


def test_dedup_removes_planted_exact_and_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(42)
    originals = [random_words(rng, 200) for _ in range(12)]
    texts = [" ".join(w) for w in originals]
    half = " ".join(originals[0][:100] + random_words(rng, 100))  # 50% overlap: distinct, must stay
    exact = texts[1].upper().replace(" ", "  ")  # same after lowercase + whitespace collapse
    near = " ".join(edit(originals[2], [60, 140]))  # two words edited in a 200-word document
    docs = ingest_texts(tmp_path, [*texts, half, exact, near])
    sink = MemorySink()
    art = dedup(DedupConfig(), docs, workdir=tmp_path / "w", sink=sink)

    kept = [i for ids, _ in iter_doc_batches(art.dir) for i in ids]
    assert kept == [f"c.jsonl:{n}" for n in range(1, 14)]  # the 12 originals + the half-overlap doc
    dropped = [json.loads(line) for line in art.file("dropped.jsonl").read_text().splitlines()]
    assert sorted(dropped, key=lambda d: d["id"]) == [
        {"id": "c.jsonl:14", "reason": "exact", "kept_id": "c.jsonl:2"},
        {"id": "c.jsonl:15", "reason": "near", "kept_id": "c.jsonl:3"},
    ]
    report = json.loads(art.file("report.json").read_text())
    assert report | {"bands": 0, "rows": 0, "verified_pairs": 0} == {
        "input": 15,
        "kept": 13,
        "dropped_exact": 1,
        "dropped_near": 1,
        "duplicate_rate": 2 / 15,
        "bands": 0,
        "rows": 0,
        "verified_pairs": 0,
    }
    assert sink.series("dropped_near") == [(0, 1.0)]


def test_exact_only_keeps_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    words = random_words(rng, 200)
    docs = ingest_texts(tmp_path, [" ".join(words), " ".join(edit(words, [50])), " ".join(words)])
    art = dedup(DedupConfig(near=False), docs, workdir=tmp_path / "w", sink=MemorySink())
    assert art.summary["kept"] == 2 and art.summary["dropped_exact"] == 1 and art.summary["dropped_near"] == 0


def test_rerun_is_cached(tmp_path: Path) -> None:
    docs = ingest_texts(tmp_path, ["alpha beta gamma delta epsilon zeta", "one two three four five six"])
    sink = MemorySink()
    first = dedup(DedupConfig(), docs, workdir=tmp_path / "w", sink=sink)
    second = dedup(DedupConfig(), docs, workdir=tmp_path / "w", sink=sink)
    assert second.cached and second.path == first.path and len(sink.history) == 1


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="both `bands` and `rows`"):
        DedupConfig(bands=4)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        DedupConfig(bands=20, rows=10, num_perm=128)
    assert DedupConfig(bands=16, rows=8).banding() == (16, 8)


def test_shingle_batch_matches_per_text_shingles() -> None:
    texts = ["a b c d e f g", "", "short text", "a b c d e f g h i"]
    hashes, doc_of = shingle_batch(texts, 5)
    assert hashes.dtype == np.uint32 and doc_of.tolist() == [0, 0, 0, 2, 3, 3, 3, 3, 3]
    for i, text in enumerate(texts):
        assert np.array_equal(np.unique(hashes[doc_of == i]), shingle_hashes(text, 5))
    assert set(shingle_hashes("a b c d e f g", 5).tolist()) < set(shingle_hashes(texts[3], 5).tolist())
    sig = MinHasher(16, 5, np.random.default_rng(0)).signatures(["", "x"])
    assert (sig[0] == 0xFFFFFFFF).all() and not (sig[1] == 0xFFFFFFFF).all()


def test_worker_processes_give_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tasks.dedup.POOL_MIN_DOCS", 2)  # use the pool even for this tiny corpus
    rng = np.random.default_rng(7)
    originals = [random_words(rng, 150) for _ in range(30)]
    texts = [" ".join(w) for w in originals] + [" ".join(edit(w, [75])) for w in originals[:5]]  # J ~ 0.94
    docs = ingest_texts(tmp_path, texts)
    inline = dedup(DedupConfig(batch_docs=4, workers=1), docs, workdir=tmp_path / "a", sink=MemorySink())
    pooled = dedup(DedupConfig(batch_docs=4, workers=2), docs, workdir=tmp_path / "b", sink=MemorySink())
    assert inline.summary == pooled.summary and inline.summary["dropped_near"] == 5
    assert inline.file("dropped.jsonl").read_text() == pooled.file("dropped.jsonl").read_text()
