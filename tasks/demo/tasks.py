"""The downstream tasks: SST-2, MRPC and STS-B (GLUE tsv) and SQuAD v1.1 (json), train and dev.

Train sets draw only visible words; dev sets draw mostly held-out words (``Split``), whose class
a model can only know from pre-training. The files use the original GLUE / SQuAD v1.1 formats,
so the real loaders read them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from tasks.demo.lexicon import (
    CLUSTER_KINDS,
    NEUTRAL_VERBS,
    PARAPHRASE_FAMILIES,
    QUESTION_WORDS,
    SST_TEMPLATES,
    Filled,
    Lexicon,
    Split,
    WordClass,
    render,
    slot_kind,
    slot_names,
)

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


# ---------------------------------------------------------------------------------------------
# Examples: one sentence, sentence pair or paragraph at a time


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
