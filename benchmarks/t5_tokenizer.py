"""T5-family tokenizers on real text: Unigram vs SentencePiece-style BPE, trained twice each.

    python benchmarks/t5_tokenizer.py --data ../shared/data --out t5_tokenizer.json [--quick]

Why: the T5 presets need a tokenizer that a re-run rebuilds byte for byte (the tokenizer is a
cached stage: a crash and re-run, or a second machine, must get the same ids), and one that
spells the text well. tokenizers' Unigram trainer gives other scores and ids in every process.
This benchmark measures both halves on the Wikipedia slice, with the project's own ingest and
tokenizer stages: each algorithm (family ``t5``, the same vocabulary size) is trained in
``--runs`` fresh processes on the same documents, and the JSON records

* ``identical_runs``: whether every run wrote the same tokenizer.json, and for Unigram how
  many pieces changed id and the largest score difference between two runs;
* ``top_words_whole``: of the ``--top`` most frequent words (runs of letters) of held-out
  documents (other files than the training ones), how many are one piece;
* ``tokens_per_word`` (all pieces of the held-out text per word) and ``unk_per_1000_tokens``;
* ``train_seconds`` (median over the runs).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.glue_bench import wiki_files
from benchmarks.provenance import now, provenance
from tasks.data.corpus.shards import iter_doc_batches
from tasks.data.ingest import IngestConfig, ingest
from tasks.sink import NullSink

ALGORITHMS = ("unigram", "bpe")
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters: what "word" means in the counts below
TRAIN = """
import sys
from tasks.data.tokenizer import TokenizerConfig, train_tokenizer
from tasks.sink import NullSink
from tasks.store.artifact import Artifact
docs = Artifact(stage="ingest", fingerprint="docs", path=sys.argv[1])
cfg = TokenizerConfig(family="t5", algorithm=sys.argv[3], vocab_size=int(sys.argv[4]))
print(train_tokenizer(cfg, docs, workdir=sys.argv[2], sink=NullSink()).dir / "tokenizer.json")
"""


def documents(files: list[Path], max_docs: int, workdir: Path) -> Path:
    """The project's ingest stage over ``files``: a document-shard dir."""
    cfg = IngestConfig(paths=tuple(str(f) for f in files), format="wiki", max_docs=max_docs)
    return ingest(cfg, workdir=workdir, sink=NullSink()).dir


def train_once(docs: Path, workdir: Path, algorithm: str, vocab: int) -> tuple[str, float]:
    """tokenizer.json text of one training in a fresh process, and its wall seconds."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", TRAIN, str(docs), str(workdir), algorithm, str(vocab)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return Path(out.stdout.strip().splitlines()[-1]).read_text(encoding="utf-8"), seconds


def unigram_drift(first: str, other: str) -> dict[str, float]:
    """How two Unigram tokenizer.json files differ: pieces with another id, largest score change."""
    a, b = (json.loads(t)["model"]["vocab"] for t in (first, other))
    scores = dict(map(tuple, b))
    return {
        "same_pieces": {p for p, _ in a} == set(scores),
        "pieces_with_another_id": sum(x[0] != y[0] for x, y in zip(a, b, strict=True)),
        "max_score_difference": max(abs(s - scores[p]) for p, s in a if p in scores),
    }


def spelling(tokenizer_json: str, texts: list[str], top: int) -> dict[str, float]:
    """Held-out text through a trained tokenizer: frequent words kept whole, pieces per word, <unk>s."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    unk = tok.token_to_id("<unk>")
    words: Counter[str] = Counter(w for text in texts for w in _WORD.findall(text))
    frequent = [w for w, _ in words.most_common(top)]
    whole = sum(len(tok.encode(w, add_special_tokens=False).ids) == 1 for w in frequent)
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    pieces = sum(len(e.ids) for e in encodings)
    unks = sum(e.ids.count(unk) for e in encodings)
    return {
        "top_words": len(frequent),
        "top_words_whole": whole,
        "tokens_per_word": round(pieces / sum(words.values()), 4),
        "unk_per_1000_tokens": round(1000 * unks / pieces, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dir with corpus/ (WikiExtractor files)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="1,000 documents, vocabulary 2,048")
    parser.add_argument("--docs", type=int, default=None, help="training documents (default 20,000)")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 8,192)")
    parser.add_argument("--runs", type=int, default=3, help="fresh-process trainings per algorithm")
    parser.add_argument("--top", type=int, default=2000, help="most frequent held-out words checked")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs: at least 2, to compare two trainings")
    max_docs = args.docs or (1000 if args.quick else 20_000)
    vocab = args.vocab or (2048 if args.quick else 8192)
    started = now()
    files = wiki_files(args.data.resolve())
    train_files, held_out_files = files[:-2], files[-2:]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        docs = documents(train_files, max_docs, work / "train")
        held_out_docs = documents(held_out_files, 2000, work / "held-out")
        held_out = [text for _, texts in iter_doc_batches(held_out_docs) for text in texts]
        for algorithm in ALGORITHMS:
            runs = [train_once(docs, work / f"{algorithm}{i}", algorithm, vocab) for i in range(args.runs)]
            texts = [text for text, _ in runs]
            report = {
                "identical_runs": len(set(texts)) == 1,
                "train_seconds": round(statistics.median(s for _, s in runs), 1),
                **spelling(texts[0], held_out, args.top),
            }
            if algorithm == "unigram":
                report["drift_between_first_two_runs"] = unigram_drift(texts[0], texts[1])
            results[algorithm] = report
            print(algorithm, json.dumps(report))
    payload = {
        "provenance": provenance(("tokenizers",), started),
        "setting": {"family": "t5", "docs": max_docs, "vocab_size": vocab, "runs": args.runs, "top": args.top,
                    "held_out_files": len(held_out_files), "quick": args.quick},
        **results,
    }  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
