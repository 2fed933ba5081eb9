"""The lexicon of the synthetic language: word classes, made-up words, and the sentence templates.

Everything the corpus (``tasks.demo.corpus``) and the downstream tasks (``tasks.demo.tasks``)
share lives here: the latent classes and their visible / held-out split (``Lexicon``,
``WordClass``, ``Split``), the English cue and glue words, and the templates both sides fill.
The templates sit with the lexicon because made-up words must never collide with a template's
glue words (``reserved_words``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

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
    "to be {sent} is to be {mood} .",
    "{sent} means {mood} .",
    "{name} was {sent} and {mood} .",
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


class DemoDataError(ValueError):
    """A demo-data knob is out of range or the generated data broke its own format."""


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
# Templates and slots


def slot_names(template: str) -> list[str]:
    """Slot names of a template in order of appearance, e.g. ['name', 'verb', 'noun']."""
    return [tok[1:-1] for tok in template.split() if tok.startswith("{")]


def slot_kind(slot: str) -> str:
    """'noun2' -> 'noun': numbered slots of one kind hold different words of that kind."""
    return slot.rstrip("0123456789")


def template_words(templates: Sequence[str]) -> set[str]:
    """The English glue words of templates; made-up words must never collide with them."""
    return {tok for t in templates for tok in t.split() if not tok.startswith("{")}


def render(template: str, words: Mapping[str, str]) -> str:
    """Fill a template's slots; raises KeyError naming a slot left unfilled (a bug, not bad input)."""
    return " ".join(words[tok[1:-1]] if tok.startswith("{") else tok for tok in template.split())


# ---------------------------------------------------------------------------------------------
# Drawing the lexicon


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


def write_lexicon(path: Path, lex: Lexicon) -> None:
    """The latent classes and their held-out words, for inspection and for tests/benchmarks."""
    classes = {wc.name: {"visible": list(wc.visible), "heldout": list(wc.heldout)} for wc in lex.classes()}
    path.write_text(
        json.dumps({"classes": classes, "noun_verb": list(lex.noun_verb)}, indent=1) + "\n", encoding="utf-8"
    )
