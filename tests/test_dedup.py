"""Dedup: MinHash accuracy, LSH banding, and planted exact / near duplicates."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tasks.data.corpus.minhash import (
    MinHasher,
    candidate_pairs,
    cluster_roots,
    exact_jaccard,
    first_kept_partner,
    jaccard_estimate,
    recall_bands,
    shingle_batch,
    shingle_hashes,
    shingle_sets,
)
from tasks.data.corpus.shards import iter_doc_batches
from tasks.data.dedup import DedupConfig, dedup
from tasks.data.ingest import IngestConfig, ingest
from tasks.sink import MemorySink
from tasks.store.artifact import Artifact

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


def test_first_kept_partner_drops_only_duplicates_of_kept_documents() -> None:
    # 0~1, 1~2 (but not 0~2): 1 goes (duplicate of kept 0), 2 stays since its only partner is gone.
    # 3 pairs with kept 0 and kept 2: reported against the lowest, 0. 4 pairs only with dropped 3.
    pairs = np.array([[2, 3], [0, 1], [1, 2], [0, 3], [3, 4]])
    assert first_kept_partner(5, pairs).tolist() == [0, 0, 2, 0, 4]
    assert first_kept_partner(2, np.zeros((0, 2), dtype=np.int64)).tolist() == [0, 1]


def test_dedup_removes_planted_exact_and_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(42)
    originals = [random_words(rng, 200) for _ in range(12)]
    texts = [" ".join(w) for w in originals]
    half = " ".join(originals[0][:100] + random_words(rng, 100))  # 50% overlap: distinct, must stay
    exact = texts[1].upper().replace(" ", "  ")  # same after lowercase + whitespace collapse
    near = " ".join(edit(originals[2], [60, 140]))  # two words edited in a 200-word document
    docs = ingest_texts(tmp_path, [*texts, half, exact, near])
    sink = MemorySink()
    started = time.perf_counter()
    art = dedup(DedupConfig(), docs, workdir=tmp_path / "w", sink=sink)
    elapsed = time.perf_counter() - started

    kept = [i for ids, _ in iter_doc_batches(art.dir) for i in ids]
    assert kept == [f"c.jsonl:{n}" for n in range(1, 14)]  # the 12 originals + the half-overlap doc
    dropped = [json.loads(line) for line in art.file("dropped.jsonl").read_text().splitlines()]
    assert sorted(dropped, key=lambda d: d["id"]) == [
        {"id": "c.jsonl:14", "reason": "exact", "kept_id": "c.jsonl:2"},
        {"id": "c.jsonl:15", "reason": "near", "kept_id": "c.jsonl:3"},
    ]
    report = json.loads(art.file("report.json").read_text())
    assert report["checked_pairs"] >= report["verified_pairs"] >= 1
    ignored = {"bands": 0, "rows": 0, "candidate_pairs": 0, "checked_pairs": 0, "verified_pairs": 0}
    assert report | ignored == {
        "input": 15,
        "kept": 13,
        "dropped_exact": 1,
        "dropped_near": 1,
        "duplicate_rate": 2 / 15,
        **ignored,
    }
    assert sink.series("dropped_near") == [(0, 1.0)]
    # a duration of the verification pass, within the call (not a timestamp, not left at 0)
    assert 0.0 < sink.series("verify_seconds")[0][1] < elapsed


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


def test_exact_jaccard_of_shingle_sets() -> None:
    texts = ["a b c d e f g", "", "short text", "a b c d e f g h i"]
    sets = shingle_sets(texts, 5)
    assert [s.tolist() for s in sets] == [shingle_hashes(t, 5).tolist() for t in texts]
    assert exact_jaccard(sets[0], sets[3]) == pytest.approx(3 / 5)  # 3 shared 5-grams of 5 in all
    assert exact_jaccard(sets[0], sets[2]) == 0.0
    assert exact_jaccard(sets[1], sets[1]) == 1.0  # two empty sets: identical


def test_exact_verification_keeps_pair_the_estimate_would_drop(tmp_path: Path) -> None:
    # Three words edited in 100: 81 of 111 distinct 5-grams shared, true Jaccard 0.73 < 0.8. With
    # 32 permutations (seed 0) the estimate for this pair is 0.84, and LSH proposes it.
    words = random_words(np.random.default_rng(6), 100)
    a, b = " ".join(words), " ".join(edit(words, [20, 50, 80]))
    sig = MinHasher(32, 5, np.random.default_rng(0)).signatures([a, b])  # (2, 32), as dedup signs them
    assert float(jaccard_estimate(sig[0], sig[1])) >= 0.8 > true_jaccard(a, b)
    docs = ingest_texts(tmp_path, [a, b])
    estimated = dedup(
        DedupConfig(num_perm=32, verify="estimate"), docs, workdir=tmp_path / "e", sink=MemorySink()
    )
    assert estimated.summary["dropped_near"] == 1  # the estimate alone makes a false positive
    exact = dedup(DedupConfig(num_perm=32), docs, workdir=tmp_path / "x", sink=MemorySink())
    assert exact.summary["checked_pairs"] == 1 and exact.summary["verified_pairs"] == 0
    assert exact.summary["kept"] == 2 and exact.summary["dropped_near"] == 0


def test_exact_verification_across_batches_keeps_true_duplicates(tmp_path: Path) -> None:
    # Near-duplicates far apart in the stream (other batches in between) and one document with two
    # partners, so sets must be held across batches and freed only after their last pair.
    rng = np.random.default_rng(11)
    originals = [random_words(rng, 120) for _ in range(8)]
    texts = [" ".join(w) for w in originals]
    texts += [
        " ".join(edit(originals[0], [60])),
        " ".join(edit(originals[3], [30])),
        " ".join(edit(originals[0], [90])),
    ]
    docs = ingest_texts(tmp_path, texts)
    art = dedup(DedupConfig(batch_docs=2), docs, workdir=tmp_path / "w", sink=MemorySink())
    dropped = [json.loads(line) for line in art.file("dropped.jsonl").read_text().splitlines()]
    assert sorted((d["id"], d["kept_id"]) for d in dropped) == [
        ("c.jsonl:10", "c.jsonl:4"),
        ("c.jsonl:11", "c.jsonl:1"),
        ("c.jsonl:9", "c.jsonl:1"),
    ]
    assert art.summary["verified_pairs"] >= 3


def test_verify_config_validation() -> None:
    with pytest.raises(ValueError, match=r"verify\n.*Input should be 'exact' or 'estimate'"):
        DedupConfig(verify="approximate")
    with pytest.raises(ValueError, match=r"verify_margin\n.*Input should be greater than or equal to 0"):
        DedupConfig(verify_margin=-0.1)
    assert DedupConfig(verify="estimate", verify_margin=0.0).verify_margin == 0.0  # the boundary is allowed
