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

The parts: ``tasks.demo.lexicon`` (word classes, made-up words, templates), ``tasks.demo.corpus``
(pre-training documents and planted duplicates) and ``tasks.demo.tasks`` (the downstream files);
this module ties them together with one seed and is the ``python -m tasks.demo.generate`` CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.demo.corpus import CorpusPlan, corpus_records, write_corpus
from tasks.demo.lexicon import DemoDataError, LexiconSpec, build_lexicon, write_lexicon
from tasks.demo.tasks import write_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoDataPaths:
    """Where the demo data landed: feed corpus_dir to ingest and data_dir to fine-tuning/evaluation."""

    corpus_dir: Path
    data_dir: Path


def task_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent streams per output, so changing one size (say n_dev) leaves other files unchanged."""
    names = ["lexicon", "corpus"] + [
        f"{t}-{s}" for t in ("sst2", "mrpc", "stsb", "squad") for s in ("train", "dev")
    ]
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children, strict=True)}


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
