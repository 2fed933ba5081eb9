"""Seeded synthetic corpus and downstream tasks for the offline demo.

A fresh clone has no real data, yet the demo must *show* that pre-training helps fine-tuning.
So we generate a tiny "language" with latent structure: ~130 made-up words grouped into a few
latent classes (positive / negative adjectives, synonym clusters of nouns and verbs, names, places,
colors, numbers) glued together by a handful of English function words.

* The pre-training corpus uses every word, each hundreds of times, in short sentences that put
  it right next to a fixed English cue word of its class: "felt happy because the X was <positive>",
  "the <noun> is a kind of animal", "to <verb> is to move", "the color <color>". The signal is first
  order and local, so a tiny masked LM learns the classes within a few hundred steps: predicting a
  masked cue from the made-up word shapes that word's input embedding, which fine-tuning reuses.
* Every class is split once into ``visible`` and ``heldout`` words. Fine-tuning train sets draw
  only visible words; dev sets draw mostly held-out words, whose class a model can only know
  from pre-training. A randomly initialised model fine-tuned on the same small train set sees
  those dev words for the first time and falls back to chance.

The downstream files use the original GLUE / SQuAD v1.1 formats, so the real loaders read them.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

SplitName = Literal["corpus", "train", "dev"]
Filled = dict[str, tuple["WordClass", str]]  # slot name -> (class, word)

# Consonant-vowel syllables for made-up words. A word's form carries no hint of its class:
# every class draws from the same syllables.
ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "br", "tr", "pl")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
CODAS = ("", "", "", "n", "r", "l", "s")

NEUTRAL_VERBS = ("likes", "mentions", "remembers", "wants", "keeps")  # say nothing about the object's class
QUESTION_WORDS = {"colors": "color", "places": "place", "numbers": "number", "feelings": "feeling"}
# Fixed English cue words, one per class, that the corpus puts right next to class members. Masked-LM
# predicts a cue from the made-up word (and the word from its cue), so after a few hundred steps a
# made-up word's embedding already says which class it belongs to: a FIRST-ORDER, local signal.
MOODS = {"positive": ("happy", "glad"), "negative": ("sad", "angry")}
NOUN_HYPERNYMS = ("animal", "tool", "fruit", "vehicle", "building", "plant", "drink", "garment")
VERB_HYPERNYMS = ("move", "eat", "build", "watch", "carry", "break")

# Corpus grammar. Slots are {kind} or {kind2}; class kinds: name, noun, verb, place, color, number, sent,
# nv; derived kinds: mood (a cue word of the sentence's polarity), hyper / vhyper (the hypernym of the
# {noun} / {verb} slot's cluster), syn (another word of the {noun} slot's cluster).
CUE_TEMPLATES = (
    "{name} felt {mood} because the {noun} was {sent} .",
    "the {noun} was {sent} , so {name} felt {mood} .",
    "a {sent} {noun} made {name} {mood} .",
    "{name} was {mood} , the {noun} was so {sent} .",
    "the {noun} is a kind of {hyper} .",
    "a {noun} , also called a {syn} , is a {hyper} .",
    "{name} saw a {hyper} called a {noun} in {place} .",
    "to {verb} is to {vhyper} .",
    "{name} {verb} the {noun} , so {name} {vhyper} the {hyper} .",
    "{name} lives in the town of {place} .",
    "{name} went from the town of {place} to {place2} .",
    "{name} painted the {noun} the color {color} .",
    "the color {color} is like the color {color2} .",
    "{name} counted {number} {noun} .",
    "the number {number} is bigger than {number2} .",
    "what color is linked to {name} ? it is {color} .",
    "what place is linked to {name} ? it is {place} .",
    "what number is linked to {name} ? it is {number} .",
    "what feeling is linked to {name} ? it is {sent} .",
)

SST_TEMPLATES = (
    "the {noun} was {sent} .",
    "{name} found the {noun} {sent} .",
    "a {sent} {noun} in {place} .",
    "the {noun} was {sent} and {sent2} .",
)

# Paraphrase families: templates with the same slots, so a sentence can be restated in another order.
# Each has 1-3 cluster slots, so STS-B scores (5 x share of kept clusters) take several values.
PARAPHRASE_FAMILIES = (
    ("{name} saw the {noun} in {place} .", "in {place} , {name} saw the {noun} ."),
    ("{name} {verb} the {noun} .", "the {noun} , {name} {verb} it ."),
    ("the {noun} and the {noun2} were in {place} .", "in {place} were the {noun} and the {noun2} ."),
    ("{name} {verb} the {noun} near the {noun2} .", "near the {noun2} , {name} {verb} the {noun} ."),
)
CLUSTER_KINDS = ("noun", "verb")  # the kinds whose classes are synonym clusters
# The corpus also uses the downstream sentence shapes, so the tokenizer knows their every word.
CORPUS_TEMPLATES = (
    *CUE_TEMPLATES,
    *SST_TEMPLATES,
    *(t for fam in PARAPHRASE_FAMILIES for t in fam),
    "{name} {nv} {color} .",  # the SQuAD fact shape, with each answer class
    "{name} {nv} {place} .",
    "{name} {nv} {number} .",
    "{name} {nv} {sent} .",
)
CUE_SHARE = 0.7  # share of corpus sentences drawn from CUE_TEMPLATES (the rest: any template)

STSB_HEADER = (
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
)
MRPC_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")


class DemoDataError(ValueError):
    """A demo-data knob is out of range or the generated data broke its own format."""


@dataclass(frozen=True)
class DemoDataPaths:
    """Where the demo data landed: feed corpus_dir to ingest and data_dir to fine-tuning/evaluation."""

    corpus_dir: Path
    data_dir: Path


@dataclass(frozen=True)
class LexiconSpec:
    """Sizes of the latent classes (per class, except the cluster counts)."""

    n_sentiment: int = 10  # adjectives per polarity
    n_noun_clusters: int = 4  # at most len(NOUN_HYPERNYMS)
    n_verb_clusters: int = 3  # at most len(VERB_HYPERNYMS)
    cluster_size: int = 8  # synonyms per cluster
    n_names: int = 12
    n_places: int = 10
    n_colors: int = 10
    n_numbers: int = 10


@dataclass(frozen=True)
class WordClass:
    """One latent class; fine-tuning train may use only `visible`, dev draws mostly from `heldout`."""

    name: str
    visible: tuple[str, ...]
    heldout: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return self.visible + self.heldout


@dataclass(frozen=True)
class Lexicon:
    """All classes of the language, plus which verb cluster each noun cluster prefers (topic coherence)."""

    pos: WordClass
    neg: WordClass
    nouns: tuple[WordClass, ...]
    verbs: tuple[WordClass, ...]
    names: WordClass
    places: WordClass
    colors: WordClass
    numbers: WordClass
    noun_verb: tuple[int, ...]

    def classes(self) -> tuple[WordClass, ...]:
        return (
            self.pos,
            self.neg,
            *self.nouns,
            *self.verbs,
            self.names,
            self.places,
            self.colors,
            self.numbers,
        )

    def clusters(self, kind: str) -> tuple[WordClass, ...]:
        return self.nouns if kind == "noun" else self.verbs

    def hypernym(self, kind: str, cluster: WordClass) -> str:
        """The English cue word of a noun / verb cluster ('animal', 'move', ...)."""
        names = NOUN_HYPERNYMS if kind == "noun" else VERB_HYPERNYMS
        return names[self.clusters(kind).index(cluster)]


@dataclass(frozen=True)
class Split:
    """Which words of a class a generator may draw.

    corpus: any word; train: visible words only (never a held-out one); dev: held-out words with
    probability `heldout_prob`, visible otherwise, falling back to the other part when `exclude`
    empties the first choice.
    """

    name: SplitName
    heldout_prob: float = 1.0

    def draw(self, wc: WordClass, rng: np.random.Generator, exclude: frozenset[str] = frozenset()) -> str:
        for part in self._parts(wc, rng):
            pool = [w for w in part if w not in exclude]
            if pool:
                return pool[int(rng.integers(len(pool)))]
        raise DemoDataError(f"class {wc.name!r} has no {self.name} word left outside {sorted(exclude)}")

    def _parts(self, wc: WordClass, rng: np.random.Generator) -> tuple[tuple[str, ...], ...]:
        if self.name == "corpus":
            return (wc.words,)
        if self.name == "train":
            return (wc.visible,)
        if rng.random() < self.heldout_prob:
            return (wc.heldout, wc.visible)
        return (wc.visible, wc.heldout)


# ---------------------------------------------------------------------------------------------
# Lexicon


def slot_names(template: str) -> list[str]:
    """Slot names of a template in order of appearance, e.g. ['name', 'verb', 'noun']."""
    return [tok[1:-1] for tok in template.split() if tok.startswith("{")]


def slot_kind(slot: str) -> str:
    """'noun2' -> 'noun': numbered slots of one kind hold different words of that kind."""
    return slot.rstrip("0123456789")


def template_words(templates: Sequence[str]) -> set[str]:
    """The English glue words of templates; made-up words must never collide with them."""
    return {tok for t in templates for tok in t.split() if not tok.startswith("{")}


def reserved_words() -> set[str]:
    glue = template_words((*CORPUS_TEMPLATES, "what is linked to ?"))
    cues = {w for moods in MOODS.values() for w in moods} | set(NOUN_HYPERNYMS) | set(VERB_HYPERNYMS)
    return glue | cues | set(NEUTRAL_VERBS) | set(QUESTION_WORDS.values())


def made_up_words(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct pronounceable made-up words of 2-3 syllables, none an English glue word."""
    taken = reserved_words()
    words: list[str] = []
    while len(words) < n:
        n_syl = 2 + int(rng.random() < 0.4)
        sylls = [ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] for _ in range(n_syl)]
        word = "".join(sylls) + CODAS[rng.integers(len(CODAS))]
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def split_class(name: str, words: Sequence[str], heldout_frac: float, min_part: int) -> WordClass:
    """Hold out the last round(frac * n) words, keeping at least `min_part` words in each part."""
    n_held = min(max(round(len(words) * heldout_frac), min_part), len(words) - min_part)
    return WordClass(name, tuple(words[: len(words) - n_held]), tuple(words[len(words) - n_held :]))


def build_lexicon(spec: LexiconSpec, heldout_frac: float, rng: np.random.Generator) -> Lexicon:
    """Draw the made-up vocabulary and cut every class into visible and held-out words.

    Synonym clusters keep at least two words per part so that train and dev can both hold
    synonym pairs made of two different words.
    """
    if spec.cluster_size < 4:
        raise DemoDataError(f"cluster_size must be >= 4 (2 visible + 2 held-out), got {spec.cluster_size}")
    if not (
        2 <= spec.n_noun_clusters <= len(NOUN_HYPERNYMS) and 2 <= spec.n_verb_clusters <= len(VERB_HYPERNYMS)
    ):
        raise DemoDataError(
            f"n_noun_clusters must be in [2, {len(NOUN_HYPERNYMS)}] and n_verb_clusters in "
            f"[2, {len(VERB_HYPERNYMS)}] (one English hypernym each), got "
            f"{spec.n_noun_clusters} and {spec.n_verb_clusters}"
        )
    sizes = [spec.n_sentiment, spec.n_sentiment, spec.n_names, spec.n_places, spec.n_colors, spec.n_numbers]
    n_visible = min(n - min(max(round(n * heldout_frac), 1), n - 1) for n in sizes)
    if min(sizes) < 2 or n_visible < 3:  # a SQuAD-like train paragraph may need 3 distinct words of a class
        raise DemoDataError(
            f"every non-cluster class needs >= 3 visible words and 1 held-out word; sizes {sizes} "
            f"with heldout_frac={heldout_frac} leave {n_visible} visible"
        )
    n_cluster_words = (spec.n_noun_clusters + spec.n_verb_clusters) * spec.cluster_size
    words = iter(made_up_words(sum(sizes) + n_cluster_words, rng))

    def take(name: str, n: int, min_part: int = 1) -> WordClass:
        return split_class(name, [next(words) for _ in range(n)], heldout_frac, min_part)

    pos, neg = take("positive", spec.n_sentiment), take("negative", spec.n_sentiment)
    nouns = tuple(take(f"noun{i:02d}", spec.cluster_size, 2) for i in range(spec.n_noun_clusters))
    verbs = tuple(take(f"verb{i:02d}", spec.cluster_size, 2) for i in range(spec.n_verb_clusters))
    names, places = take("names", spec.n_names), take("places", spec.n_places)
    colors, numbers = take("colors", spec.n_colors), take("numbers", spec.n_numbers)
    # Every verb cluster serves the same number of noun clusters (+-1), so no verb is rare.
    noun_verb = tuple(int(i) % spec.n_verb_clusters for i in rng.permutation(spec.n_noun_clusters))
    return Lexicon(pos, neg, nouns, verbs, names, places, colors, numbers, noun_verb)


def render(template: str, words: Mapping[str, str]) -> str:
    """Fill a template's slots; raises KeyError naming a slot left unfilled (a bug, not bad input)."""
    return " ".join(words[tok[1:-1]] if tok.startswith("{") else tok for tok in template.split())


# ---------------------------------------------------------------------------------------------
# Pre-training corpus


@dataclass(frozen=True)
class DocTopic:
    """A document's latent state: what it is about and its mood, shared by all its sentences."""

    polarity: WordClass
    nouns: tuple[WordClass, WordClass]
    verbs: tuple[WordClass, WordClass]
    cast: tuple[str, ...]
    home: str


def draw_topic(lex: Lexicon, rng: np.random.Generator) -> DocTopic:
    corpus = Split("corpus")
    a, b = (int(i) for i in rng.choice(len(lex.nouns), size=2, replace=False))
    cast = tuple(str(w) for w in rng.choice(lex.names.words, size=3, replace=False))
    polarity = lex.pos if rng.random() < 0.5 else lex.neg
    verbs = (lex.verbs[lex.noun_verb[a]], lex.verbs[lex.noun_verb[b]])
    return DocTopic(polarity, (lex.nouns[a], lex.nouns[b]), verbs, cast, corpus.draw(lex.places, rng))


def corpus_slot_class(slot: str, topic: DocTopic, lex: Lexicon, rng: np.random.Generator) -> WordClass:
    """The class a corpus slot draws from: topical nouns/verbs, the document's polarity, any color..."""
    kind, second = slot_kind(slot), slot != slot_kind(slot)
    if kind == "noun":
        return topic.nouns[int(second)]
    if kind == "verb":  # a noun cluster's usual verbs, sometimes any verb cluster
        return (
            topic.verbs[int(second)] if rng.random() < 0.8 else lex.verbs[int(rng.integers(len(lex.verbs)))]
        )
    if kind == "sent":
        return topic.polarity
    if kind == "nv":
        return WordClass("neutral-verbs", NEUTRAL_VERBS, ())
    return {"place": lex.places, "color": lex.colors, "number": lex.numbers}[kind]


DERIVED_KINDS = ("mood", "hyper", "vhyper", "syn")  # filled from other slots, after them


def derived_word(slot: str, filled: Filled, topic: DocTopic, lex: Lexicon, rng: np.random.Generator) -> str:
    """A cue word agreeing with the sentence: its mood, its noun's or verb's hypernym, a synonym."""
    if slot == "mood":
        moods = MOODS[topic.polarity.name]
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
    cast = [str(w) for w in rng.permutation(topic.cast)]
    slots = list(dict.fromkeys(slot_names(template)))
    for slot in [s for s in slots if s not in DERIVED_KINDS]:
        if slot_kind(slot) == "name":
            word, wc = cast.pop(), lex.names
        elif slot == "place" and rng.random() < 0.6:
            word, wc = topic.home, lex.places
        else:
            wc = corpus_slot_class(slot, topic, lex, rng)
            word = corpus.draw(wc, rng, frozenset(used))
        filled[slot] = (wc, word)
        used.add(word)
    for slot in [s for s in slots if s in DERIVED_KINDS]:
        word = derived_word(slot, filled, topic, lex, rng)
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


def corpus_document(lex: Lexicon, rng: np.random.Generator, restate_prob: float) -> str:
    """A topical document of 6-12 short sentences, most of them putting a class word next to its cue
    word, sometimes restating a sentence 'in other words'."""
    topic = draw_topic(lex, rng)
    sentences = []
    for _ in range(int(rng.integers(6, 13))):
        pool = CUE_TEMPLATES if rng.random() < CUE_SHARE else CORPUS_TEMPLATES
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


# ---------------------------------------------------------------------------------------------
# Fine-tuning tasks


def pick_cluster(kind: str, lex: Lexicon, rng: np.random.Generator, avoid: frozenset[str]) -> WordClass:
    """A random noun/verb cluster not named in `avoid`: one sentence never uses a cluster twice, so a
    synonym swap always has unused words left and "same cluster" stays unambiguous per slot."""
    clusters = [c for c in lex.clusters(kind) if c.name not in avoid]
    return clusters[int(rng.integers(len(clusters)))]


def generic_class(kind: str, lex: Lexicon, rng: np.random.Generator, avoid: frozenset[str]) -> WordClass:
    """The class a downstream slot draws from when the task does not pin it."""
    if kind in CLUSTER_KINDS:
        return pick_cluster(kind, lex, rng, avoid)
    if kind == "sent":
        return lex.pos if rng.random() < 0.5 else lex.neg
    return {"name": lex.names, "place": lex.places, "color": lex.colors, "number": lex.numbers}[kind]


def fill_slots(
    template: str,
    lex: Lexicon,
    split: Split,
    rng: np.random.Generator,
    pinned: Mapping[str, WordClass] | None = None,
) -> Filled:
    """Fill every slot with a distinct word; `pinned` fixes the class of some slot kinds."""
    filled: Filled = {}
    for slot in slot_names(template):
        kind = slot_kind(slot)
        taken = frozenset(c.name for c, _ in filled.values())
        wc = (pinned or {}).get(kind) or generic_class(kind, lex, rng, taken)
        used = frozenset(w for _, w in filled.values())
        filled[slot] = (wc, split.draw(wc, rng, used))
    return filled


def sst_example(lex: Lexicon, split: Split, rng: np.random.Generator) -> tuple[str, int]:
    """A sentence whose label is the polarity of its (one or two) sentiment adjectives."""
    label = int(rng.random() < 0.5)
    template = SST_TEMPLATES[int(rng.integers(len(SST_TEMPLATES)))]
    filled = fill_slots(template, lex, split, rng, pinned={"sent": lex.pos if label else lex.neg})
    return render(template, {s: w for s, (_, w) in filled.items()}), label


def sentence_pair(lex: Lexicon, split: Split, rng: np.random.Generator, n_changed: Callable[[int], int]):
    """Two sentences with the same names/places; cluster words become synonyms or another cluster.

    `n_changed(n_cluster_slots)` says how many cluster slots move to a different cluster. Every
    kept slot gets a *different* word of the same cluster, so surface overlap is the same for
    paraphrases and non-paraphrases: only knowing the clusters tells them apart.
    Returns (sentence1, sentence2, n_same, n_cluster_slots).
    """
    family = PARAPHRASE_FAMILIES[int(rng.integers(len(PARAPHRASE_FAMILIES)))]
    first, second = (family[int(i)] for i in rng.integers(len(family), size=2))
    filled = fill_slots(first, lex, split, rng)
    cluster_slots = [s for s in filled if slot_kind(s) in CLUSTER_KINDS]
    changed = set(rng.choice(cluster_slots, size=n_changed(len(cluster_slots)), replace=False).tolist())
    used = {w for _, w in filled.values()}
    taken = frozenset(c.name for c, _ in filled.values())
    words2 = {}
    for slot, (wc, word) in filled.items():
        if slot in cluster_slots:
            target = pick_cluster(slot_kind(slot), lex, rng, taken) if slot in changed else wc
            word = split.draw(target, rng, frozenset(used))
            used.add(word)
        words2[slot] = word
    s1 = render(first, {s: w for s, (_, w) in filled.items()})
    return s1, render(second, words2), len(cluster_slots) - len(changed), len(cluster_slots)


def mrpc_example(lex: Lexicon, split: Split, rng: np.random.Generator) -> tuple[str, str, int]:
    """Paraphrase (1): all cluster words swapped for synonyms; not (0): 1..half moved to other clusters."""
    label = int(rng.random() < 0.5)

    def n_changed(n: int) -> int:
        return 0 if label else int(rng.integers(1, max(n // 2, 1) + 1))

    s1, s2, _, _ = sentence_pair(lex, split, rng, n_changed)
    return s1, s2, label


def stsb_example(lex: Lexicon, split: Split, rng: np.random.Generator) -> tuple[str, str, float]:
    """Similarity = 5 x the fraction of cluster slots whose word stays in its cluster."""
    s1, s2, n_same, n_slots = sentence_pair(lex, split, rng, lambda n: int(rng.integers(0, n + 1)))
    return s1, s2, 5.0 * n_same / n_slots


def join_tokens(tokens: Sequence[str]) -> tuple[str, list[int]]:
    """Space-join tokens and return each token's character offset in the result."""
    starts, pos = [], 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok) + 1
    return " ".join(tokens), starts


def squad_facts(lex: Lexicon, split: Split, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(name, class key, word) facts: 1-2 people with 3 attributes each, all words distinct."""
    classes = {"colors": lex.colors, "places": lex.places, "numbers": lex.numbers}
    used: set[str] = set()
    facts = []
    for _ in range(int(rng.integers(1, 3))):
        name = split.draw(lex.names, rng, frozenset(used))
        used.add(name)
        for key in rng.choice(sorted(QUESTION_WORDS), size=3, replace=False).tolist():
            wc = classes.get(key) or (lex.pos if rng.random() < 0.5 else lex.neg)
            word = split.draw(wc, rng, frozenset(used))
            used.add(word)
            facts.append((name, key, word))
    return facts


def squad_sentences(
    facts: Sequence[tuple[str, str, str]], lex: Lexicon, split: Split, rng: np.random.Generator
):
    """Fact sentences '<name> <neutral verb> <word> .' plus 1-2 filler sentences, shuffled.

    Returns (tokens, fact index or None) per sentence; a fact's answer is its token 2.
    """
    sentences: list[tuple[list[str], int | None]] = [
        ([name, NEUTRAL_VERBS[int(rng.integers(len(NEUTRAL_VERBS)))], word, "."], k)
        for k, (name, _, word) in enumerate(facts)
    ]
    filler = "{name} {verb} the {noun} ."
    for _ in range(int(rng.integers(1, 3))):
        words = {s: w for s, (_, w) in fill_slots(filler, lex, split, rng).items()}
        sentences.append((render(filler, words).split(), None))
    return [sentences[int(i)] for i in rng.permutation(len(sentences))]


def squad_paragraph(lex: Lexicon, split: Split, rng: np.random.Generator, tag: str, n_q: int) -> dict:
    """A context of facts plus filler, and questions 'what <class> is linked to <name> ?' whose answer
    is the one word of that class stated for that name.

    The neutral verbs say nothing about the class, so finding the span needs class knowledge.
    """
    facts = squad_facts(lex, split, rng)
    tokens: list[str] = []
    answer_token: dict[int, int] = {}  # fact index -> token index of its answer in the context
    for toks, fact in squad_sentences(facts, lex, split, rng):
        if fact is not None:
            answer_token[fact] = len(tokens) + 2
        tokens.extend(toks)
    context, starts = join_tokens(tokens)
    qas = []
    for j, k in enumerate(rng.choice(len(facts), size=min(n_q, len(facts)), replace=False).tolist()):
        name, key, word = facts[k]
        question = f"what {QUESTION_WORDS[key]} is linked to {name} ?"
        answers = [{"text": word, "answer_start": starts[answer_token[k]]}]
        qas.append({"id": f"{tag}-q{j}", "question": question, "answers": answers})
    return {"context": context, "qas": qas}


def squad_dataset(lex: Lexicon, split: Split, rng: np.random.Generator, n_questions: int) -> dict:
    """SQuAD v1.1 JSON with `n_questions` questions, 3 per paragraph, 10 paragraphs per article."""
    paragraphs, n = [], 0
    while n < n_questions:
        para = squad_paragraph(
            lex, split, rng, f"{split.name}-{len(paragraphs):05d}", min(3, n_questions - n)
        )
        paragraphs.append(para)
        n += len(para["qas"])
    articles = [
        {"title": f"demo-{split.name}-{a:04d}", "paragraphs": paragraphs[a * 10 : (a + 1) * 10]}
        for a in range((len(paragraphs) + 9) // 10)
    ]
    return {"data": articles, "version": "1.1"}


# ---------------------------------------------------------------------------------------------
# Writing files


def write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """GLUE-style TSV, unquoted: csv raises if a field would need quoting (tab, quote, newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n", escapechar=None)
        writer.writerow(header)
        writer.writerows(rows)


def flip(label: int, noise: float, rng: np.random.Generator) -> int:
    """Label noise for binary tasks: flip with probability `noise` (0 keeps the data clean)."""
    return 1 - label if rng.random() < noise else label


def sst_rows(lex: Lexicon, split: Split, rng: np.random.Generator, n: int, noise: float) -> list[tuple]:
    rows = []
    for _ in range(n):
        sentence, label = sst_example(lex, split, rng)
        rows.append((sentence, flip(label, noise, rng)))
    return rows


def mrpc_rows(lex: Lexicon, split: Split, rng: np.random.Generator, n: int, noise: float) -> list[tuple]:
    """MRPC rows (Quality, #1 ID, #2 ID, #1 String, #2 String) with distinct 7-digit sentence ids."""
    rows = []
    ids = rng.choice(np.arange(1_000_000, 9_999_999), size=2 * n, replace=False).tolist()
    for i in range(n):
        s1, s2, label = mrpc_example(lex, split, rng)
        rows.append((flip(label, noise, rng), ids[2 * i], ids[2 * i + 1], s1, s2))
    return rows


def stsb_rows(lex: Lexicon, split: Split, rng: np.random.Generator, n: int) -> list[tuple]:
    """The real 10-column STS-B layout; only sentence1, sentence2 and score carry information."""
    rows = []
    for i in range(n):
        s1, s2, score = stsb_example(lex, split, rng)
        rows.append(
            (
                i,
                "main-synthetic",
                "bertflow-demo",
                split.name,
                f"{i:04d}",
                "none",
                "none",
                s1,
                s2,
                f"{score:.3f}",
            )
        )
    return rows


def task_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent streams per output, so changing one size (say n_dev) leaves other files unchanged."""
    names = ["lexicon", "corpus"] + [
        f"{t}-{s}" for t in ("sst2", "mrpc", "stsb", "squad") for s in ("train", "dev")
    ]
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children, strict=True)}


def write_tasks(
    data_dir: Path,
    lex: Lexicon,
    rngs: dict[str, np.random.Generator],
    sizes: dict[str, int],
    dev_heldout_prob: float,
    label_noise: float,
) -> None:
    """Write SST-2, MRPC, STS-B (GLUE tsv) and SQuAD v1.1 json train/dev files under data_dir."""
    glue = data_dir / "glue"
    for split in (Split("train"), Split("dev", dev_heldout_prob)):
        s, n = split.name, sizes[split.name]
        write_tsv(
            glue / "SST-2" / f"{s}.tsv",
            ("sentence", "label"),
            sst_rows(lex, split, rngs[f"sst2-{s}"], n, label_noise),
        )
        write_tsv(
            glue / "MRPC" / f"{s}.tsv", MRPC_HEADER, mrpc_rows(lex, split, rngs[f"mrpc-{s}"], n, label_noise)
        )
        write_tsv(glue / "STS-B" / f"{s}.tsv", STSB_HEADER, stsb_rows(lex, split, rngs[f"stsb-{s}"], n))
        squad = squad_dataset(lex, split, rngs[f"squad-{s}"], n)
        (data_dir / "squad").mkdir(parents=True, exist_ok=True)
        (data_dir / "squad" / f"{s}.json").write_text(json.dumps(squad) + "\n", encoding="utf-8")


def write_lexicon(path: Path, lex: Lexicon) -> None:
    """The latent classes and their held-out words, for inspection and for tests/benchmarks."""
    classes = {wc.name: {"visible": list(wc.visible), "heldout": list(wc.heldout)} for wc in lex.classes()}
    path.write_text(
        json.dumps({"classes": classes, "noun_verb": list(lex.noun_verb)}, indent=1) + "\n", encoding="utf-8"
    )


def check_knobs(
    n_corpus_docs: int,
    n_train: int,
    n_dev: int,
    heldout_frac: float,
    dev_heldout_prob: float,
    label_noise: float,
) -> None:
    problems = []
    if n_corpus_docs < 1 or n_train < 1 or n_dev < 1:
        problems.append(
            f"sizes must be >= 1 (n_corpus_docs={n_corpus_docs}, n_train={n_train}, n_dev={n_dev})"
        )
    if not 0.0 < heldout_frac < 1.0:
        problems.append(f"heldout_frac must be in (0, 1), got {heldout_frac}")
    if not 0.0 <= dev_heldout_prob <= 1.0:
        problems.append(f"dev_heldout_prob must be in [0, 1], got {dev_heldout_prob}")
    if not 0.0 <= label_noise < 0.5:
        problems.append(f"label_noise must be in [0, 0.5), got {label_noise}")
    if problems:
        raise DemoDataError("; ".join(problems))


def generate_demo_data(
    out_dir: Path,
    *,
    seed: int = 0,
    n_corpus_docs: int = 5000,
    n_train: int = 400,
    n_dev: int = 200,
    heldout_frac: float = 0.5,
    dev_heldout_prob: float = 0.9,
    label_noise: float = 0.0,
    restate_prob: float = 0.1,
    n_exact_dups: int = 20,
    n_near_dups: int = 20,
    docs_per_shard: int = 2000,
    lexicon: LexiconSpec | None = None,
) -> DemoDataPaths:
    """Write the synthetic corpus (<out>/corpus), the planted duplicates (<out>/planted.json) and the
    downstream tasks (<out>/data); same seed, same bytes.

    heldout_frac: share of each class's words never used by fine-tuning train sets.
    dev_heldout_prob: chance that a dev slot draws a held-out word (else a visible one).
    label_noise: chance of flipping SST-2 / MRPC labels (train and dev).
    restate_prob: chance that a corpus sentence is followed by an 'in other words' synonym restatement.
    """
    check_knobs(n_corpus_docs, n_train, n_dev, heldout_frac, dev_heldout_prob, label_noise)
    out_dir = Path(out_dir)
    rngs = task_rngs(seed)
    lex = build_lexicon(lexicon or LexiconSpec(), heldout_frac, rngs["lexicon"])
    plan = CorpusPlan(n_corpus_docs, n_exact_dups, n_near_dups, docs_per_shard, restate_prob)
    records, report = corpus_records(plan, lex, rngs["corpus"])
    paths = DemoDataPaths(corpus_dir=out_dir / "corpus", data_dir=out_dir / "data")
    write_corpus(paths.corpus_dir, records, docs_per_shard)
    # beside the corpus, not in it: ingest reads every file of the corpus folder
    (out_dir / "planted.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    write_tasks(paths.data_dir, lex, rngs, {"train": n_train, "dev": n_dev}, dev_heldout_prob, label_noise)
    write_lexicon(out_dir / "lexicon.json", lex)
    log.info(
        "demo data: %d documents (%d planted duplicates), %d train / %d dev examples per task in %s",
        len(records),
        n_exact_dups + n_near_dups,
        n_train,
        n_dev,
        out_dir,
    )
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tasks.demo.generate OUT_DIR [--seed N] [--docs N] [--train N] [--dev N]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=int, default=5000, help="pre-training documents")
    parser.add_argument("--train", type=int, default=400, help="fine-tuning examples per task")
    parser.add_argument("--dev", type=int, default=200, help="dev examples per task")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate_demo_data(
        args.out_dir, seed=args.seed, n_corpus_docs=args.docs, n_train=args.train, n_dev=args.dev
    )


if __name__ == "__main__":
    main()
