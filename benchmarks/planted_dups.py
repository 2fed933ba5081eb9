"""Planted near-duplicate benchmark for the dedup stage (used by ``data_bench.py``).

Real paragraphs of an ingested corpus are the "originals"; planted copies of some of them are
edited the ways scraped web text repeats itself (words replaced, sentences dropped, sentences
appended, or several at once) so their exact word-5-gram Jaccard with the original spans about
0.3 .. 1.0. Everything is seeded, so two runs build the same set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tasks.data.corpus.minhash import (
    MinHasher,
    candidate_pairs,
    exact_jaccard,
    first_kept_partner,
    jaccard_estimate,
    shingle_sets,
)
from tasks.data.corpus.normalize import dedup_key_text
from tasks.data.corpus.shards import iter_doc_batches
from tasks.data.dedup import DedupConfig, dedup
from tasks.data.ingest import IngestConfig, ingest
from tasks.sink import MemorySink, NullSink
from tasks.store.artifact import Artifact

NGRAM = 5
RECALL_MIN_JACCARD = 0.85  # the bar: planted pairs at least this similar must be found
LOOSE_MIN_JACCARD = 0.7  # the old, looser precision: threshold minus ~3 sigma of a 128-perm estimate


def shingles(text: str) -> set[tuple[str, ...]]:
    """Exact word-5-gram set of the normalized text (independent of the MinHash code)."""
    words = dedup_key_text(text).split()
    return {tuple(words[i : i + NGRAM]) for i in range(max(1, len(words) - NGRAM + 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def real_paragraphs(docs: Artifact, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct paragraphs of 40..300 words, sampled from the first 4n that qualify."""
    pool: dict[str, str] = {}
    for _, texts in iter_doc_batches(docs.dir):
        for text in texts:
            for para in text.split("\n"):
                if 40 <= para.count(" ") + 1 <= 300:
                    pool.setdefault(dedup_key_text(para), para)
        if len(pool) >= 4 * n:
            break
    paras = list(pool.values())
    return [paras[i] for i in sorted(rng.choice(len(paras), min(n, len(paras)), replace=False))]


def mutate(text: str, donor: str, rng: np.random.Generator) -> str:
    """A planted copy: one to three of replace-words / drop-sentence / append-sentence."""
    kinds = rng.choice(["replace", "drop", "append"], size=int(rng.integers(1, 4)), replace=False)
    for kind in kinds:
        sentences = [s for s in text.split(". ") if s]
        if kind == "replace":
            words = text.split(" ")
            donor_words = donor.split(" ")
            rate = rng.uniform(0.003, 0.06)
            for i in np.flatnonzero(rng.random(len(words)) < rate):
                words[i] = donor_words[int(rng.integers(len(donor_words)))]
            text = " ".join(words)
        elif kind == "drop" and len(sentences) > 2:
            del sentences[int(rng.integers(len(sentences)))]
            text = ". ".join(sentences)
        elif kind == "append":
            text = text + " " + donor.split(". ")[0] + "."
    return text


def build_planted_set(docs: Artifact, n_orig: int, n_planted: int, seed: int = 0) -> tuple[list[str], list]:
    """Texts (originals then planted copies, shuffled) and (copy index, original index, Jaccard) triples."""
    rng = np.random.default_rng(seed)
    originals = real_paragraphs(docs, n_orig, rng)
    sources = rng.choice(len(originals), n_planted, replace=False)
    copies = [mutate(originals[s], originals[int(rng.integers(len(originals)))], rng) for s in sources]
    texts = originals + copies
    order = rng.permutation(len(texts))  # copies may come before their originals
    position = np.empty_like(order)
    position[order] = np.arange(len(texts))
    pairs = [
        (int(position[len(originals) + k]), int(position[s]), jaccard(copies[k], originals[s]))
        for k, s in enumerate(sources)
    ]
    return [texts[i] for i in order], pairs


def ingest_texts(texts: list[str], workdir: Path) -> Artifact:
    path = workdir / "planted" / "planted.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = IngestConfig(
        paths=(str(path),), min_chars=1, min_alpha_fraction=0.0, max_repeated_line_fraction=1.0
    )
    return ingest(cfg, workdir=workdir / "planted-work", sink=NullSink())


def score(texts: list[str], pairs: list, dropped: list[dict], threshold: float) -> dict:
    """Recall on planted pairs with Jaccard >= 0.85 and precision of every dropped pair.

    Precision is strict: a dropped (document, kept) pair is correct only if its true Jaccard
    reaches the dedup ``threshold`` itself. The looser count (>= 0.7) is kept for comparison.
    """
    index = {f"planted.jsonl:{i + 1}": i for i in range(len(texts))}  # jsonl ids are 1-based lines
    kept_for = {index[d["id"]]: index[d["kept_id"]] for d in dropped}
    similar = [(c, o) for c, o, j in pairs if j >= RECALL_MIN_JACCARD]
    found = sum(kept_for.get(c) == o or kept_for.get(o) == c for c, o in similar)
    exact = [jaccard(texts[d], texts[k]) for d, k in kept_for.items()]
    return {
        "dedup_planted_pairs": len(pairs),
        "dedup_planted_pairs_jaccard_ge_085": len(similar),
        "dedup_recall": found / max(1, len(similar)),
        "dedup_dropped_pairs": len(exact),
        "dedup_precision": float(np.mean([j >= threshold for j in exact])) if exact else 1.0,
        "dedup_precision_loose_ge_070": float(np.mean([j >= LOOSE_MIN_JACCARD for j in exact]))
        if exact
        else 1.0,
        "dedup_planted_jaccard_range": [min(j for *_, j in pairs), max(j for *_, j in pairs)],
    }


def datasketch_seconds(texts: list[str], num_perm: int, threshold: float) -> tuple[float, int]:
    """datasketch MinHash + MinHashLSH, the usual query-then-insert loop; (seconds, duplicates)."""
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    lsh, dups = MinHashLSH(threshold=threshold, num_perm=num_perm), 0
    for i, text in enumerate(texts):
        words = dedup_key_text(text).split()
        grams = {" ".join(words[j : j + NGRAM]).encode() for j in range(max(1, len(words) - NGRAM + 1))}
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(grams))
        if lsh.query(m):
            dups += 1
        else:
            lsh.insert(i, m)
    return time.perf_counter() - start, dups


def rensa_seconds(texts: list[str], num_perm: int, threshold: float, bands: int) -> tuple[float, int] | None:
    """rensa (Rust) RMinHash + RMinHashLSH in the same loop, when installed."""
    try:
        from rensa import RMinHash, RMinHashLSH
    except ImportError:
        return None
    start = time.perf_counter()
    lsh, dups = RMinHashLSH(threshold=threshold, num_perm=num_perm, num_bands=bands), 0
    for i, text in enumerate(texts):
        words = dedup_key_text(text).split()
        m = RMinHash(num_perm=num_perm, seed=1)
        m.update([" ".join(words[j : j + NGRAM]) for j in range(max(1, len(words) - NGRAM + 1))])
        if lsh.query(m):
            dups += 1
        else:
            lsh.insert(i, m)
    return time.perf_counter() - start, dups


def divisor_bands(num_perm: int, threshold: float) -> int:
    """Bands for rensa, which needs bands * rows == num_perm: the S-curve midpoint nearest the threshold."""
    divisors = [b for b in range(1, num_perm + 1) if num_perm % b == 0]
    return min(divisors, key=lambda b: abs((1 / b) ** (b / num_perm) - threshold))


def ours_in_memory_seconds(texts: list[str], cfg: DedupConfig) -> dict:
    """Our MinHash + LSH on texts in memory (no Parquet, no exact-hash pass), timed in two steps.

    ``lsh``: signatures, banding and the estimate filter at ``threshold`` -- the same work as
    datasketch's MinHash + MinHashLSH loop, so the like-for-like comparison. ``exact``: the
    extra exact-Jaccard check of pairs whose estimate reaches ``threshold - verify_margin``.
    """
    start = time.perf_counter()
    hasher = MinHasher(cfg.num_perm, cfg.ngram, np.random.default_rng(cfg.seed))
    keys = [dedup_key_text(t) for t in texts]
    sigs = np.concatenate(
        [hasher.signatures(keys[i : i + cfg.batch_docs]) for i in range(0, len(keys), cfg.batch_docs)]
    )
    cands = candidate_pairs(sigs, *cfg.banding())
    estimate = jaccard_estimate(sigs[cands[:, 0]], sigs[cands[:, 1]])
    roots = first_kept_partner(len(texts), cands[estimate >= cfg.threshold])
    lsh_seconds = time.perf_counter() - start
    start = time.perf_counter()
    checked = cands[estimate >= cfg.threshold - cfg.verify_margin]
    docs = np.unique(checked)
    sets = dict(zip(docs.tolist(), shingle_sets([keys[d] for d in docs], cfg.ngram), strict=True))
    exact = np.array([exact_jaccard(sets[i], sets[j]) for i, j in checked.tolist()], dtype=float)
    exact_roots = first_kept_partner(len(texts), checked[exact >= cfg.threshold])
    exact_seconds = time.perf_counter() - start
    return {
        "dedup_lsh_in_memory_seconds": lsh_seconds,
        "dedup_lsh_in_memory_duplicates": int((roots != np.arange(len(texts))).sum()),
        "dedup_exact_check_in_memory_seconds": exact_seconds,
        "dedup_exact_in_memory_duplicates": int((exact_roots != np.arange(len(texts))).sum()),
    }


def timed_stage(cfg: DedupConfig, store: Artifact, workdir: Path) -> tuple[Artifact, float, float]:
    """Our whole dedup stage (Parquet in and out): (artifact, seconds, its exact-verification seconds)."""
    sink = MemorySink()
    start = time.perf_counter()
    art = dedup(cfg, store, workdir=workdir, sink=sink)
    seconds = time.perf_counter() - start
    return art, seconds, sink.series("verify_seconds")[-1][1]


def planted_benchmark(docs: Artifact, workdir: Path, quick: bool) -> dict:
    """Build the planted set, run our dedup stage and the baselines on it, and score everything."""
    n_orig, n_planted = (3_000, 600) if quick else (30_000, 3_000)
    texts, pairs = build_planted_set(docs, n_orig, n_planted)
    store = ingest_texts(texts, workdir)
    cfg = DedupConfig()
    art, stage_seconds, verify_seconds = timed_stage(cfg, store, workdir / "planted-work")
    est_cfg = cfg.model_copy(update={"verify": "estimate"})
    est_art, est_seconds, _ = timed_stage(est_cfg, store, workdir / "planted-work")
    dropped = [json.loads(line) for line in art.file("dropped.jsonl").read_text().splitlines()]
    est_dropped = [json.loads(line) for line in est_art.file("dropped.jsonl").read_text().splitlines()]
    est_score = score(texts, pairs, est_dropped, cfg.threshold)
    ours = ours_in_memory_seconds(texts, cfg)
    ds_seconds, ds_dups = datasketch_seconds(texts, cfg.num_perm, cfg.threshold)
    figures = score(texts, pairs, dropped, cfg.threshold) | {
        "dedup_docs": len(texts),
        "dedup_bands_rows": list(cfg.banding()),
        "dedup_stage_seconds": stage_seconds,
        "dedup_stage_verify_seconds": verify_seconds,
        "dedup_stage_estimate_only_seconds": est_seconds,
        "dedup_estimate_only_recall": est_score["dedup_recall"],
        "dedup_estimate_only_precision": est_score["dedup_precision"],
        **ours,
        "datasketch_seconds": ds_seconds,
        "datasketch_duplicates": ds_dups,
        "dedup_speedup_vs_datasketch": ds_seconds / stage_seconds,
        "dedup_lsh_speedup_vs_datasketch": ds_seconds / ours["dedup_lsh_in_memory_seconds"],
        "dedup_in_memory_exact_speedup_vs_datasketch": ds_seconds
        / (ours["dedup_lsh_in_memory_seconds"] + ours["dedup_exact_check_in_memory_seconds"]),
    }
    rensa = rensa_seconds(texts, cfg.num_perm, cfg.threshold, divisor_bands(cfg.num_perm, cfg.threshold))
    if rensa is not None:
        figures |= {"rensa_seconds": rensa[0], "rensa_duplicates": rensa[1]}
    return figures
