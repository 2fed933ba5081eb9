"""The pre-training corpus: topical documents of cue sentences, planted duplicates, JSONL shards.

Each document draws a latent topic (two noun clusters with their usual verbs, a cast of names,
a home place) and fills corpus templates from it, so most sentences put a made-up word right
next to the English cue word of its class. Polarity is drawn per sentence, not per document:
with one mood for a whole document, masked-LM learnt to copy 'happy' from the document's other
sentences and never tied a sentiment word to its mood, so nothing reached the held-out words.
Exact and near duplicates are planted at random places, and reported in ``planted.json``, so the
dedup stage has known pairs to find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.demo.lexicon import (
    CLUSTER_KINDS,
    CORPUS_TEMPLATES,
    CUE_TEMPLATES,
    MOODS,
    NEUTRAL_VERBS,
    DemoDataError,
    Filled,
    Lexicon,
    Split,
    WordClass,
    render,
    slot_kind,
    slot_names,
)

CUE_SHARE = 0.7  # share of corpus sentences drawn from CUE_TEMPLATES (the rest: any template)
# Of the cue sentences, the share drawn from those that put a mood word next to a sentiment word
# (the rest from all cue templates). Measured with the tiny preset: at 0.25, 1,000 steps taught
# two seeds of five what the held-out sentiment words mean; at 0.6 with 1,500 steps, all five.
MOOD_SHARE = 0.6
MOOD_TEMPLATES = tuple(t for t in CUE_TEMPLATES if "{mood}" in t)


@dataclass(frozen=True)
class DocTopic:
    """A document's latent state: what it is about, shared by all its sentences."""

    nouns: tuple[WordClass, WordClass]
    verbs: tuple[WordClass, WordClass]
    cast: tuple[str, ...]
    home: str


def draw_topic(lex: Lexicon, rng: np.random.Generator) -> DocTopic:
    corpus = Split("corpus")
    a, b = (int(i) for i in rng.choice(len(lex.nouns), size=2, replace=False))
    cast = tuple(str(w) for w in rng.choice(lex.names.words, size=3, replace=False))
    verbs = (lex.verbs[lex.noun_verb[a]], lex.verbs[lex.noun_verb[b]])
    return DocTopic((lex.nouns[a], lex.nouns[b]), verbs, cast, corpus.draw(lex.places, rng))


def corpus_slot_class(
    slot: str, topic: DocTopic, polarity: WordClass, lex: Lexicon, rng: np.random.Generator
) -> WordClass:
    """The class a corpus slot draws from: topical nouns/verbs, the sentence's polarity, any color..."""
    kind, second = slot_kind(slot), slot != slot_kind(slot)
    if kind == "noun":
        return topic.nouns[int(second)]
    if kind == "verb":  # a noun cluster's usual verbs, sometimes any verb cluster
        return (
            topic.verbs[int(second)] if rng.random() < 0.8 else lex.verbs[int(rng.integers(len(lex.verbs)))]
        )
    if kind == "sent":
        return polarity
    if kind == "nv":
        return WordClass("neutral-verbs", NEUTRAL_VERBS, ())
    return {"place": lex.places, "color": lex.colors, "number": lex.numbers}[kind]


DERIVED_KINDS = ("mood", "hyper", "vhyper", "syn")  # filled from other slots, after them


def derived_word(
    slot: str, filled: Filled, polarity: WordClass, lex: Lexicon, rng: np.random.Generator
) -> str:
    """A cue word agreeing with the sentence: its mood, its noun's or verb's hypernym, a synonym."""
    if slot == "mood":
        moods = MOODS[polarity.name]
        return moods[int(rng.integers(len(moods)))]
    if slot == "syn":
        cluster, word = filled["noun"]
        return Split("corpus").draw(cluster, rng, frozenset({w for _, w in filled.values()} | {word}))
    kind = "noun" if slot == "hyper" else "verb"
    return lex.hypernym(kind, filled[kind][0])


def fill_corpus_sentence(template: str, topic: DocTopic, lex: Lexicon, rng: np.random.Generator) -> Filled:
    """Fill one corpus sentence; names come from the document's cast, places mostly its home.

    A slot repeated in a template ('{name} ... so {name} ...') holds one word; cue slots are
    filled last, from the words they must agree with.
    """
    corpus, filled, used = Split("corpus"), {}, set()
    polarity = lex.pos if rng.random() < 0.5 else lex.neg
    cast = [str(w) for w in rng.permutation(topic.cast)]
    slots = list(dict.fromkeys(slot_names(template)))
    for slot in [s for s in slots if s not in DERIVED_KINDS]:
        if slot_kind(slot) == "name":
            word, wc = cast.pop(), lex.names
        elif slot == "place" and rng.random() < 0.6:
            word, wc = topic.home, lex.places
        else:
            wc = corpus_slot_class(slot, topic, polarity, lex, rng)
            word = corpus.draw(wc, rng, frozenset(used))
        filled[slot] = (wc, word)
        used.add(word)
    for slot in [s for s in slots if s in DERIVED_KINDS]:
        word = derived_word(slot, filled, polarity, lex, rng)
        cue_class = filled["noun"][0] if slot == "syn" else WordClass(slot, (word,), ())
        filled[slot] = (cue_class, word)
    return filled


def restate_with_synonyms(filled: Filled, rng: np.random.Generator) -> dict[str, str]:
    """The same sentence with every cluster word swapped for another member of its cluster."""
    corpus = Split("corpus")
    out = {}
    for slot, (wc, word) in filled.items():
        swap = slot_kind(slot) in CLUSTER_KINDS
        out[slot] = corpus.draw(wc, rng, frozenset({word})) if swap else word
    return out


def corpus_pool(draw: float) -> tuple[str, ...]:
    """The templates a corpus sentence is drawn from, for a uniform ``draw`` in [0, 1)."""
    if draw < CUE_SHARE * MOOD_SHARE:
        return MOOD_TEMPLATES
    return CUE_TEMPLATES if draw < CUE_SHARE else CORPUS_TEMPLATES


def corpus_document(lex: Lexicon, rng: np.random.Generator, restate_prob: float) -> str:
    """A topical document of 6-12 short sentences, most of them putting a class word next to its cue
    word, sometimes restating a sentence 'in other words'."""
    topic = draw_topic(lex, rng)
    sentences = []
    for _ in range(int(rng.integers(6, 13))):
        pool = corpus_pool(rng.random())
        template = pool[int(rng.integers(len(pool)))]
        filled = fill_corpus_sentence(template, topic, lex, rng)
        sentences.append(render(template, {s: w for s, (_, w) in filled.items()}))
        has_cluster = any(slot_kind(s) in CLUSTER_KINDS for s in filled)
        if has_cluster and rng.random() < restate_prob:
            sentences.append("in other words , " + render(template, restate_with_synonyms(filled, rng)))
    return " ".join(sentences)


def near_duplicate(text: str, lex: Lexicon, rng: np.random.Generator) -> str:
    """`text` with its last made-up word replaced by another word of its class.

    At the end, only a few word 5-gram shingles contain the word (Jaccard ~0.9+), so MinHash-LSH at
    the usual 0.8 threshold finds every planted pair rather than most of them.
    """
    class_of = {w: wc for wc in lex.classes() for w in wc.words}
    tokens = text.split()
    i = max(i for i, tok in enumerate(tokens) if tok in class_of)
    tokens[i] = Split("corpus").draw(class_of[tokens[i]], rng, frozenset({tokens[i]}))
    return " ".join(tokens)


def shingle_jaccard(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity of the word n-gram sets of two texts (what MinHash dedup estimates)."""

    def grams(text: str) -> set[tuple[str, ...]]:
        toks = text.split()
        return {tuple(toks[i : i + n]) for i in range(max(len(toks) - n + 1, 1))}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


@dataclass(frozen=True)
class CorpusPlan:
    """Corpus knobs: documents, planted duplicates, shard size and how often sentences are restated."""

    n_docs: int
    n_exact_dups: int
    n_near_dups: int
    docs_per_shard: int
    restate_prob: float


def corpus_records(plan: CorpusPlan, lex: Lexicon, rng: np.random.Generator) -> tuple[list[dict], dict]:
    """Documents with planted exact and near duplicates at random places, plus the plant report.

    Duplicates copy documents of >= 12 sentences so one swapped word keeps a near-duplicate
    above the usual MinHash thresholds; the report gives each one's exact word 5-gram Jaccard.
    """
    texts = [corpus_document(lex, rng, plan.restate_prob) for _ in range(plan.n_docs)]
    ids = [f"doc-{i:06d}" for i in range(plan.n_docs)]
    long_docs = [i for i, t in enumerate(texts) if t.count(" . ") >= 11]
    n_plant = plan.n_exact_dups + plan.n_near_dups
    if n_plant > len(long_docs):
        raise DemoDataError(f"cannot plant {n_plant} duplicates in {plan.n_docs} documents; add documents")
    sources = [int(i) for i in rng.choice(long_docs, size=n_plant, replace=False)]
    planted: dict[str, list[dict[str, str | float]]] = {"exact": [], "near": []}
    records = [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]
    for k, src in enumerate(sources):
        exact = k < plan.n_exact_dups
        text = texts[src] if exact else near_duplicate(texts[src], lex, rng)
        dup_id = f"doc-{plan.n_docs + k:06d}"
        records.insert(int(rng.integers(len(records) + 1)), {"id": dup_id, "text": text})
        entry = {
            "id": dup_id,
            "copy_of": ids[src],
            "jaccard_5gram": round(shingle_jaccard(text, texts[src]), 4),
        }
        planted["exact" if exact else "near"].append(entry)
    report = {"n_docs": len(records), "n_exact": plan.n_exact_dups, "n_near": plan.n_near_dups, **planted}
    return records, report


def write_corpus(corpus_dir: Path, records: list[dict], docs_per_shard: int) -> None:
    """JSONL shards of the corpus into a new directory (an existing one is refused, never cleared)."""
    corpus_dir.mkdir(parents=True, exist_ok=False)
    for shard, start in enumerate(range(0, len(records), docs_per_shard)):
        lines = [json.dumps(r, ensure_ascii=True) + "\n" for r in records[start : start + docs_per_shard]]
        (corpus_dir / f"part-{shard:03d}.jsonl").write_text("".join(lines), encoding="utf-8")
