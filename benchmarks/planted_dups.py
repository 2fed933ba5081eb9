"""Planted near-duplicate benchmark for the dedup stage (used by ``data_bench.py``).

Real paragraphs of an ingested corpus are the "originals"; planted copies of some of them are
edited the ways scraped web text repeats itself (words replaced, sentences dropped, sentences
appended, or several at once) so their exact word-5-gram Jaccard with the original spans about
0.3 .. 1.0. Everything is seeded, so two runs build the same set.

On that set our dedup is timed against two baselines, ``datasketch`` and ``rensa``, like for
like: the same normalized texts (in memory), the same word-5-gram shingles, the same
``num_perm`` and ``threshold``, and the same query-then-insert loop -- each document queries
the LSH index, is dropped when a candidate's MinHash estimate reaches ``threshold`` (the
lowest-index such candidate is the document it duplicates, as in our stage), and is inserted
otherwise. Each baseline runs in its best configuration we found (see ``baselines``):
permutations generated once and shared (``MinHash.bulk``), and for rensa its batch
``RMinHash.from_token_sets``. Every baseline is also scored with the same recall / precision
as our stage, so a faster but lossier configuration shows as such.

Timing is paired: all contenders run once per block, in an order rotated from block to block,
and a speedup is the median over blocks of the ratio within a block (which shared the
machine's load of that moment). Every block's seconds are kept in the JSON.
"""

from __future__ import annotations

import gc
import json
import shutil
import statistics
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

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
SEED = 1  # baselines' MinHash seed


def shingles(text: str) -> set[tuple[str, ...]]:
    """Exact word-5-gram set of the normalized text (independent of the MinHash code)."""
    words = dedup_key_text(text).split()
    return {tuple(words[i : i + NGRAM]) for i in range(max(1, len(words) - NGRAM + 1))}


def shingle_strings(text: str) -> list[str]:
    """The same word-5-grams as strings, the baselines' tokens (a short text: one of all its words).

    ``zip`` over shifted word lists: the fastest pure-Python way we found (about 20 % faster
    than indexing ``words[i : i + 5]``); repeated n-grams are kept (they do not change a MinHash).
    """
    words = dedup_key_text(text).split()
    if len(words) < NGRAM:
        return [" ".join(words)]
    return list(map(" ".join, zip(*[words[i:] for i in range(NGRAM)], strict=False)))


def shingle_bytes(text: str) -> list[bytes]:
    """``shingle_strings`` as UTF-8 bytes (datasketch hashes bytes), without encoding each n-gram."""
    words = dedup_key_text(text).encode().split()  # the key text's only whitespace is single spaces
    if len(words) < NGRAM:
        return [b" ".join(words)]
    return list(map(b" ".join, zip(*[words[i:] for i in range(NGRAM)], strict=False)))


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


# --- scoring ---------------------------------------------------------------------------------


def score(texts: list[str], pairs: list, kept_for: dict[int, int], threshold: float) -> dict:
    """Recall on planted pairs with Jaccard >= 0.85 and precision of every dropped pair.

    ``kept_for`` maps each dropped document (index into ``texts``) to the kept document it was
    dropped against. Precision is strict: a dropped (document, kept) pair is correct only if
    its true Jaccard reaches the dedup ``threshold`` itself. The looser count (>= 0.7) is kept too.
    """
    similar = [(c, o) for c, o, j in pairs if j >= RECALL_MIN_JACCARD]
    found = sum(kept_for.get(c) == o or kept_for.get(o) == c for c, o in similar)
    exact = [jaccard(texts[d], texts[k]) for d, k in kept_for.items()]
    return {
        "recall": found / max(1, len(similar)),
        "dropped_pairs": len(exact),
        "precision": float(np.mean([j >= threshold for j in exact])) if exact else 1.0,
        "precision_loose_ge_070": float(np.mean([j >= LOOSE_MIN_JACCARD for j in exact])) if exact else 1.0,
    }


def stage_kept_for(art: Artifact) -> dict[int, int]:
    """Dropped document -> kept document, read from a dedup stage's ``dropped.jsonl``."""
    rows = [json.loads(line) for line in art.file("dropped.jsonl").read_text().splitlines()]
    line_of = lambda doc_id: int(doc_id.rsplit(":", 1)[1]) - 1  # noqa: E731  jsonl ids are 1-based lines
    return {line_of(r["id"]): line_of(r["kept_id"]) for r in rows}


def roots_kept_for(roots: np.ndarray) -> dict[int, int]:
    return {int(i): int(r) for i, r in enumerate(roots.tolist()) if r != i}


# --- our side --------------------------------------------------------------------------------


def run_stage(cfg: DedupConfig, store: Artifact, workdir: Path) -> tuple[dict, dict[int, int]]:
    """Our whole dedup stage (Parquet in and out), built fresh in ``workdir`` (deleted after)."""
    sink = MemorySink()
    start = time.perf_counter()
    art = dedup(cfg, store, workdir=workdir, sink=sink)
    seconds = time.perf_counter() - start
    kept_for = stage_kept_for(art)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"seconds": seconds, "verify_seconds": sink.series("verify_seconds")[-1][1]}, kept_for


def run_in_memory(texts: list[str], cfg: DedupConfig) -> tuple[dict, dict[int, int]]:
    """Our MinHash + LSH on texts in memory (no Parquet, no exact-hash pass), timed in two steps.

    ``seconds``: signatures, banding and the estimate filter at ``threshold`` -- the same work
    as the baselines' loop. ``exact_seconds``: the extra exact-Jaccard check of pairs whose
    estimate reaches ``threshold - verify_margin`` (the stage's default verification).
    Returns the estimate-only result for scoring.
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
    timing = {
        "seconds": lsh_seconds,
        "exact_seconds": exact_seconds,
        "candidates": len(cands),
        "exact_duplicates": int((exact_roots != np.arange(len(texts))).sum()),
    }
    return timing, roots_kept_for(roots)


# --- baselines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """One baseline configuration: how it sketches shingle lists and which LSH index it queries."""

    name: str
    library: str
    config: str  # what it is, in words (copied to the JSON)
    shingles: Callable[[str], list]  # text -> its word-5-grams, in the type the library hashes
    sketch: Callable[[list[list], int], Iterable[Any]]  # (shingle lists, num_perm) -> MinHashes
    index: Callable[[float, int], Any]  # (threshold, num_perm) -> an empty LSH index
    reuses_permutations: bool = True


def _ds_fresh(grams: list[list[bytes]], num_perm: int) -> Iterable[Any]:
    from datasketch import MinHash

    for gs in grams:  # a new MinHash per document regenerates its permutations every time
        m = MinHash(num_perm=num_perm, seed=SEED)
        m.update_batch(gs)
        yield m


def _ds_bulk(hashfunc: Callable[[bytes], int] | None) -> Callable[[list[list[bytes]], int], Iterable[Any]]:
    def sketch(grams: list[list[bytes]], num_perm: int) -> Iterable[Any]:
        from datasketch import MinHash

        extra = {"hashfunc": hashfunc} if hashfunc else {}
        # bulk: one MinHash is built (permutations generated once), each document gets a copy
        return MinHash.bulk(grams, num_perm=num_perm, seed=SEED, **extra)

    return sketch


def _ds_index(params: tuple[int, int] | None) -> Callable[[float, int], Any]:
    def index(threshold: float, num_perm: int) -> Any:
        from datasketch import MinHashLSH

        return MinHashLSH(threshold=threshold, num_perm=num_perm, params=params)

    return index


def _rensa_bulk(grams: list[list[str]], num_perm: int) -> Iterable[Any]:
    from rensa import RMinHash

    return RMinHash.from_token_sets(grams, num_perm=num_perm, seed=SEED)


def _rensa_index(bands: Callable[[int, float], int]) -> Callable[[float, int], Any]:
    def index(threshold: float, num_perm: int) -> Any:
        from rensa import RMinHashLSH

        return RMinHashLSH(threshold=threshold, num_perm=num_perm, num_bands=bands(num_perm, threshold))

    return index


def divisor_bands(num_perm: int, threshold: float) -> int:
    """Bands for rensa, which needs bands * rows == num_perm: the S-curve midpoint nearest the threshold."""
    divisors = [b for b in range(1, num_perm + 1) if num_perm % b == 0]
    return min(divisors, key=lambda b: abs((1 / b) ** (b / num_perm) - threshold))


def divisor_recall_bands(num_perm: int, threshold: float, min_recall: float = 0.99) -> int:
    """Fewest bands dividing ``num_perm`` that make a pair at ``threshold`` a candidate with
    probability >= ``min_recall`` (our stage's rule, ``recall_bands``, restricted to divisors)."""
    for bands in (b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1 - (1 - threshold**rows) ** bands >= min_recall:
            return bands
    return num_perm


def baselines(cfg: DedupConfig) -> list[Baseline]:
    """Every baseline configuration measured. The headline figure for each library is its
    fastest configuration that reuses permutations (picked from the measured medians)."""
    ours = cfg.banding()
    return [
        Baseline(
            "datasketch_fresh",
            "datasketch",
            "MinHash(num_perm, seed=1) per document (permutations regenerated per document: the old, "
            "unfair baseline, kept to measure what reuse gains); default hashfunc (sha1_hash32); "
            "MinHashLSH's own (bands, rows) for the threshold",
            shingle_bytes,
            _ds_fresh,
            _ds_index(None),
            reuses_permutations=False,
        ),
        Baseline(
            "datasketch",
            "datasketch",
            "MinHash.bulk (permutations generated once, shared); default hashfunc (sha1_hash32); "
            "MinHashLSH's own (bands, rows) for the threshold",
            shingle_bytes,
            _ds_bulk(None),
            _ds_index(None),
        ),
        Baseline(
            "datasketch_crc32",
            "datasketch",
            "MinHash.bulk (shared permutations); hashfunc=zlib.crc32 (datasketch's documented speed-up: "
            "a faster hashfunc; its affine32 scheme re-mixes the 32-bit value); MinHashLSH's own "
            "(bands, rows) for the threshold",
            shingle_bytes,
            _ds_bulk(zlib.crc32),
            _ds_index(None),
        ),
        Baseline(
            "datasketch_crc32_our_banding",
            "datasketch",
            f"as datasketch_crc32, with our stage's (bands, rows) = {ours} (candidate recall 0.99 at the "
            "threshold) via MinHashLSH(params=...)",
            shingle_bytes,
            _ds_bulk(zlib.crc32),
            _ds_index(ours),
        ),
        Baseline(
            "rensa",
            "rensa",
            "RMinHash (full-set R-MinHash, 32-bit slots, every shingle) built by RMinHash.from_token_sets "
            "(batch, shared parameters) + RMinHashLSH with num_bands dividing num_perm whose S-curve "
            f"midpoint is nearest the threshold ({divisor_bands(cfg.num_perm, cfg.threshold)} bands, "
            "as in rensa's README benchmark)",
            shingle_strings,
            _rensa_bulk,
            _rensa_index(divisor_bands),
        ),
        Baseline(
            "rensa_recall_banding",
            "rensa",
            "as rensa, with the fewest bands dividing num_perm that give candidate recall 0.99 at the "
            f"threshold like our stage ({divisor_recall_bands(cfg.num_perm, cfg.threshold)} bands)",
            shingle_strings,
            _rensa_bulk,
            _rensa_index(divisor_recall_bands),
        ),
    ]


def query_then_insert(minhashes: Iterable[Any], lsh: Any, threshold: float) -> tuple[dict[int, int], int]:
    """The baselines' loop: drop a document when an indexed (kept) candidate's estimate reaches
    ``threshold`` (naming the lowest-index one), insert it otherwise -> (kept_for, candidates seen)."""
    kept: dict[int, Any] = {}
    kept_for: dict[int, int] = {}
    candidates = 0
    for i, m in enumerate(minhashes):
        found = lsh.query(m)
        candidates += len(found)
        match = next((c for c in sorted(found) if m.jaccard(kept[c]) >= threshold), None)
        if match is None:
            lsh.insert(i, m)
            kept[i] = m
        else:
            kept_for[i] = match
    return kept_for, candidates


def run_baseline(b: Baseline, texts: list[str], cfg: DedupConfig) -> tuple[dict, dict[int, int]]:
    """Shingling, sketching and the loop, all timed (texts already in memory)."""
    start = time.perf_counter()
    grams = [b.shingles(t) for t in texts]
    shingled = time.perf_counter()
    kept_for, candidates = query_then_insert(
        b.sketch(grams, cfg.num_perm), b.index(cfg.threshold, cfg.num_perm), cfg.threshold
    )
    end = time.perf_counter()
    return {"seconds": end - start, "shingle_seconds": shingled - start, "candidates": candidates}, kept_for


def bands_rows(index: Any, num_perm: int) -> list[int]:
    """(bands, rows) an LSH index of either library really uses."""
    if hasattr(index, "get_num_bands"):  # rensa
        return [index.get_num_bands(), num_perm // index.get_num_bands()]
    return [index.b, index.r]  # datasketch


def available(library: str) -> bool:
    try:
        __import__(library)
    except ImportError:
        return False
    return True


def estimate_errors(texts: list[str], pairs: list, cfg: DedupConfig, chosen: list[Baseline]) -> dict:
    """Error of each sketch's Jaccard estimate on the planted pairs (exact word-5-gram Jaccard as truth)."""
    idx = sorted({i for c, o, _ in pairs for i in (c, o)})
    pos = {d: k for k, d in enumerate(idx)}
    sub = [texts[d] for d in idx]
    truth = np.array([j for *_, j in pairs])
    hasher = MinHasher(cfg.num_perm, cfg.ngram, np.random.default_rng(cfg.seed))
    sigs = hasher.signatures([dedup_key_text(t) for t in sub])
    a, b = [pos[c] for c, _, _ in pairs], [pos[o] for _, o, _ in pairs]
    estimates = {"ours": jaccard_estimate(sigs[a], sigs[b])}
    for base in chosen:
        ms = list(base.sketch([base.shingles(t) for t in sub], cfg.num_perm))
        estimates[base.name] = np.array([ms[i].jaccard(ms[k]) for i, k in zip(a, b, strict=True)])
    return {
        name: {
            "rmse": float(np.sqrt(np.mean((est - truth) ** 2))),
            "mean_error": float(np.mean(est - truth)),
            "max_abs_error": float(np.max(np.abs(est - truth))),
        }
        for name, est in estimates.items()
    }


# --- the paired timing -----------------------------------------------------------------------


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def planted_benchmark(docs: Artifact, workdir: Path, quick: bool, blocks: int | None = None) -> dict:
    """Build the planted set, time our dedup and the baselines in paired blocks, and score everything."""
    n_orig, n_planted = (3_000, 600) if quick else (30_000, 3_000)
    blocks = blocks or (3 if quick else 7)
    texts, pairs = build_planted_set(docs, n_orig, n_planted)
    store = ingest_texts(texts, workdir)
    cfg = DedupConfig()
    est_cfg = cfg.model_copy(update={"verify": "estimate"})
    runs_dir = workdir / "planted-runs"
    base = [b for b in baselines(cfg) if available(b.library)]
    contenders: dict[str, Callable[[str], tuple[dict, dict[int, int]]]] = {
        "ours_stage": lambda tag: run_stage(cfg, store, runs_dir / f"exact-{tag}"),
        "ours_stage_estimate_only": lambda tag: run_stage(est_cfg, store, runs_dir / f"estimate-{tag}"),
        "ours_in_memory": lambda tag: run_in_memory(texts, cfg),
        **{b.name: (lambda tag, b=b: run_baseline(b, texts, cfg)) for b in base},
    }
    names = list(contenders)
    # warm-up round (imports, code digests, allocator): untimed; its results are scored
    # (every contender is seeded, so each block reproduces them)
    results: dict[str, tuple[dict, dict[int, int]]] = {}
    for name in names:
        results[name] = contenders[name]("warmup")
        gc.collect()
    raw: dict[str, list[dict]] = {name: [] for name in names}
    orders = []
    for r in range(blocks):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        orders.append(order)
        for name in order:
            raw[name].append(contenders[name](str(r))[0])
            gc.collect()
    seconds = {name: [row["seconds"] for row in rows] for name, rows in raw.items()}

    def ratios(baseline: str, ours: str) -> list[float]:
        return [b / o for b, o in zip(seconds[baseline], seconds[ours], strict=True)]

    ours_exact_in_memory = [row["seconds"] + row["exact_seconds"] for row in raw["ours_in_memory"]]
    scored = {name: score(texts, pairs, results[name][1], cfg.threshold) for name in names}
    table: dict[str, dict] = {}
    for b in base:
        table[b.name] = {
            "library": b.library,
            "config": b.config,
            "reuses_permutations": b.reuses_permutations,
            "bands_rows": bands_rows(b.index(cfg.threshold, cfg.num_perm), cfg.num_perm),
            "seconds": spread(seconds[b.name]),
            "shingle_seconds": spread([row["shingle_seconds"] for row in raw[b.name]]),
            "candidates": results[b.name][0]["candidates"],
            **scored[b.name],
            "speedup_of_ours_stage": spread(ratios(b.name, "ours_stage")),
            "speedup_of_ours_in_memory": spread(ratios(b.name, "ours_in_memory")),
            "speedup_of_ours_in_memory_exact": spread(
                [s / o for s, o in zip(seconds[b.name], ours_exact_in_memory, strict=True)]
            ),
        }
    figures: dict[str, Any] = {
        "dedup_docs": len(texts),
        "dedup_planted_pairs": len(pairs),
        "dedup_planted_pairs_jaccard_ge_085": sum(j >= RECALL_MIN_JACCARD for *_, j in pairs),
        "dedup_planted_jaccard_range": [min(j for *_, j in pairs), max(j for *_, j in pairs)],
        "dedup_bands_rows": list(cfg.banding()),
        "dedup_recall": scored["ours_stage"]["recall"],
        "dedup_precision": scored["ours_stage"]["precision"],
        "dedup_precision_loose_ge_070": scored["ours_stage"]["precision_loose_ge_070"],
        "dedup_dropped_pairs": scored["ours_stage"]["dropped_pairs"],
        "dedup_estimate_only_recall": scored["ours_stage_estimate_only"]["recall"],
        "dedup_estimate_only_precision": scored["ours_stage_estimate_only"]["precision"],
        "dedup_in_memory_recall": scored["ours_in_memory"]["recall"],
        "dedup_in_memory_precision": scored["ours_in_memory"]["precision"],
        "dedup_stage_seconds": statistics.median(seconds["ours_stage"]),
        "dedup_stage_verify_seconds": statistics.median(r["verify_seconds"] for r in raw["ours_stage"]),
        "dedup_stage_estimate_only_seconds": statistics.median(seconds["ours_stage_estimate_only"]),
        "dedup_lsh_in_memory_seconds": statistics.median(seconds["ours_in_memory"]),
        "dedup_exact_check_in_memory_seconds": statistics.median(
            r["exact_seconds"] for r in raw["ours_in_memory"]
        ),
    }
    for library in ("datasketch", "rensa"):
        fair = [b.name for b in base if b.library == library and b.reuses_permutations]
        if not fair:
            figures[f"{library}_version"] = None
            continue
        best = min(fair, key=lambda name: statistics.median(seconds[name]))
        row = table[best]
        figures |= {
            f"{library}_version": metadata.version(library),
            f"{library}_baseline": best,
            f"{library}_seconds": row["seconds"]["median"],
            f"{library}_recall": row["recall"],
            f"{library}_precision": row["precision"],
            f"dedup_speedup_vs_{library}": row["speedup_of_ours_stage"]["median"],
            f"dedup_speedup_vs_{library}_range": [
                row["speedup_of_ours_stage"]["min"],
                row["speedup_of_ours_stage"]["max"],
            ],
            f"dedup_lsh_speedup_vs_{library}": row["speedup_of_ours_in_memory"]["median"],
            f"dedup_in_memory_exact_speedup_vs_{library}": row["speedup_of_ours_in_memory_exact"]["median"],
        }
    if "datasketch_fresh" in seconds and "datasketch" in seconds:
        figures["datasketch_reuse_speedup"] = spread(ratios("datasketch_fresh", "datasketch"))
    figures["dedup_baselines"] = table
    figures["dedup_estimate_error"] = estimate_errors(
        texts, pairs, cfg, [b for b in base if b.name in ("datasketch", "datasketch_crc32", "rensa")]
    )
    figures["dedup_ours"] = {
        name: {**scored[name], "seconds": spread(seconds[name])}
        for name in ("ours_stage", "ours_stage_estimate_only", "ours_in_memory")
    }
    figures["dedup_timing_blocks"] = {"order": orders, "raw": raw}
    return figures
