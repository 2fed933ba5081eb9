"""Tokenizer: train a BERT-style subword tokenizer on document shards.

The trainer reads the shards as a stream of text batches (nothing is copied to disk or held
whole in memory) and the result is saved in two forms: ``tokenizer.json`` for the
``tokenizers`` library (what the pipeline itself uses, via :func:`load_tokenizer`) and the
``vocab.txt`` / ``tokenizer_config.json`` / ``special_tokens_map.json`` trio that transformers'
``BertTokenizerFast`` expects, so checkpoints can be used outside the pipeline.

The vocabulary is padded with ``[unused0]``, ``[unused1]``, ... (BERT's own filler names) up to
a multiple of ``pad_vocab_multiple`` (64 by default): embedding and output matrices whose row
count is a multiple of 64 map onto tensor-core/GEMM tiles without a ragged edge. The fillers
are appended to the trained model's vocabulary, after every trained token, so trained ids do not
move; they are ordinary vocabulary entries (not added tokens), so ordinary text never encodes to
them: wordpiece/bpe pre-tokenizers split "[unused0]" at its brackets, and unigram fillers get
the lowest score already in the vocabulary (a lower one would raise unigram's unknown-character
penalty, which is derived from the minimum, and change how other text is split).
``get_vocab_size()`` -- and so ``pack.json``'s ``vocab_size`` -- counts them.

Special tokens sit at fixed ids, the model family's set in order (specials.py): BERT's
[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, or T5's <pad>=0 </s>=1 <unk>=2 and the sentinels
<extra_id_0>=3 .. <extra_id_99>=102. Training fails loudly if they land elsewhere; a saved
tokenizer says its family by the padding token it holds. BERT's template adds [CLS] A [SEP]
(B [SEP]); T5's closes each segment with </s>.

Two layouts (``metaspace_layout``). BERT's WordPiece/BPE split punctuation off and mark
continuations with ##, as BertTokenizerFast expects. Unigram, and BPE for the T5 family, are
spelt SentencePiece-style: word starts marked with "▁", nothing split off, so decoding gives back
the text exactly -- T5 is scored on decoded text. WordPiece is refused for T5 for that reason.
tokenizers' Unigram trainer seeds only substrings seen with two different continuations, so a
word that is never a prefix of another (punctuation set apart, as in the demo's language) is never
a whole piece; the t5-tiny preset uses BPE for that (BENCHMARKS.md "T5 demo"). Unigram training is
also not reproducible (other scores and ids in every process; BENCHMARKS.md "T5 tokenizer"), so
both T5 presets use BPE, and choosing Unigram logs a warning.
"""

from __future__ import annotations

import json
import logging
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tasks.data.corpus.sampling import ShardSample, sample_rows
from tasks.data.corpus.shards import iter_shard_batches, read_rows
from tasks.data.specials import BERT, FAMILIES, Family, SpecialTokens, family_of
from tasks.sink import MetricSink, NullSink
from tasks.store.artifact import Artifact
from tasks.store.stage import Job, Stage

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
SPECIAL_TOKENS = BERT.tokens  # ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), index == fixed id
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
UNIGRAM_IS_NOT_REPRODUCIBLE = (
    "tokenizer: Unigram training is not reproducible: the same documents give other piece scores "
    "and ids in every process, so a rebuild gives another model (what was built on the old one is "
    "rebuilt, not reused); algorithm = 'bpe' is byte-identical (BENCHMARKS.md 'T5 tokenizer')"
)
_SUBWORD_PREFIX = "##"
_METASPACE = "▁"
_PRINTABLE = sorted(set(string.printable) - set(string.whitespace))  # T5 family: see _trainer


class TokenizerConfig(BaseModel):
    """Subword algorithm, vocabulary size, the model family's special tokens and text normalization."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Family = Field(
        "bert", description="Special tokens and template: bert ([CLS] A [SEP]) or t5 (A </s>, 100 sentinels)."
    )

    algorithm: Literal["wordpiece", "bpe", "unigram"] = Field(
        "wordpiece",
        description="Subword model; wordpiece is what BERT uses and what BertTokenizerFast loads. "
        "T5 family: unigram or bpe, both spelt SentencePiece-style (word starts marked with \u2581). "
        "unigram is not reproducible: every training gives other scores and ids.",
    )
    vocab_size: int = Field(30_522, ge=64, le=1_000_000, description="Target vocabulary size incl. specials.")
    min_frequency: int = Field(
        2, ge=1, le=1_000_000, description="Minimum count for a merge (wordpiece/bpe)."
    )
    limit_alphabet: int = Field(
        1000, ge=1, le=1_000_000, description="Most frequent characters kept in the alphabet (wordpiece/bpe)."
    )
    lowercase: bool = Field(True, description="Lowercase text (uncased model).")
    strip_accents: bool | None = Field(None, description="Strip accents; None follows `lowercase` like BERT.")
    pad_vocab_multiple: int = Field(
        64,
        ge=1,
        le=4096,
        description="Pad the vocabulary with [unused*] tokens to a multiple of this (1: off).",
    )
    model_max_length: int = Field(512, ge=8, le=1_000_000, description="Max sequence length recorded for HF.")
    max_docs: int | None = Field(
        None,
        ge=1,
        description="Train on a seeded sample of at most N documents, spread over the corpus (None: all).",
    )
    sample_seed: int = Field(0, ge=0, description="Seed of the id hash that picks the max_docs sample.")
    batch_docs: int = Field(1000, ge=1, le=1_000_000, description="Documents per batch fed to the trainer.")

    @model_validator(mode="after")
    def _t5_spells_its_targets_back(self) -> TokenizerConfig:
        """T5 is scored on decoded text, so its tokenizer must give back what it was given."""
        if self.family == "t5" and self.algorithm == "wordpiece":
            raise ValueError(
                "tokenizer.algorithm='wordpiece' cannot be used with tokenizer.family='t5': WordPiece splits "
                "punctuation off and decodes it with spaces, so T5 targets such as 'not_equivalent' or '3.8' "
                "come back as 'not _ equivalent' or '3. 8' and score as invalid; use 'unigram' or 'bpe'"
            )
        return self


def build_tokenizer(cfg: TokenizerConfig, docs: Artifact, *, out: Path, job: Job) -> dict:
    """Train a tokenizer on a document-shard artifact and save it in tokenizers + HF formats."""
    sink = job.sink
    sample, total = sample_rows(docs.dir, cfg.max_docs, cfg.sample_seed)
    specials = FAMILIES[cfg.family]
    tokenizer = _new_tokenizer(cfg, specials)
    chars = [] if cfg.algorithm == "unigram" else kept_alphabet(cfg, tokenizer, sample)
    pieces = [] if metaspace_layout(cfg) else [f"{_SUBWORD_PREFIX}{c}" for c in chars]
    trainer = _trainer(cfg, specials, chars, pieces)
    if cfg.algorithm == "unigram":
        log.warning(UNIGRAM_IS_NOT_REPRODUCIBLE)
    tokenizer.train_from_iterator(_text_batches(cfg, sample, sink, total), trainer, length=total)
    tokenizer = _unmark_special(tokenizer, specials, pieces)
    _check_special_ids(tokenizer, "trained tokenizer", specials)
    trained = tokenizer.get_vocab_size()
    tokenizer = pad_vocab(tokenizer, cfg.pad_vocab_multiple)
    tokenizer.post_processor = _template(specials)
    _save(cfg, specials, tokenizer, out)
    summary = {"algorithm": cfg.algorithm, "vocab_size": tokenizer.get_vocab_size(), "docs": total}
    summary |= {"trained_vocab_size": trained, "unused_tokens": summary["vocab_size"] - trained}
    sink.log_metrics({"vocab_size": summary["vocab_size"], "docs": total}, step=0)
    log.info("tokenizer: %s vocabulary of %d from %d documents", cfg.algorithm, summary["vocab_size"], total)
    return summary


def load_tokenizer(directory: Path | str) -> Tokenizer:
    """The tokenizer saved in an artifact or checkpoint dir, checked for its family's fixed special ids."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {directory}")
    tokenizer = Tokenizer.from_file(str(path))
    _check_special_ids(tokenizer, str(path), tokenizer_family(tokenizer, str(path)))
    return tokenizer


def tokenizer_family(tokenizer: Tokenizer, where: str) -> SpecialTokens:
    """The special-token family of a trained tokenizer, read off the padding token it holds."""
    return family_of(lambda token: tokenizer.token_to_id(token) is not None, where)


def pad_vocab(tokenizer: Tokenizer, multiple: int) -> Tokenizer:
    """A copy of ``tokenizer`` whose model vocabulary ends with ``[unused<i>]`` fillers so that
    its size is a multiple of ``multiple``; trained ids are unchanged."""
    size = tokenizer.get_vocab_size()
    missing = -size % multiple
    if missing == 0:
        return tokenizer
    state = json.loads(tokenizer.to_str())
    model = state["model"]
    existing = set(tokenizer.get_vocab())
    fillers = [name for name in (f"[unused{i}]" for i in range(size + missing)) if name not in existing]
    fillers = fillers[:missing]
    if model["type"] == "Unigram":
        lowest = min(score for _, score in model["vocab"])
        model["vocab"] += [[name, lowest] for name in fillers]  # list of [piece, log-prob]
    else:
        model["vocab"] |= {name: size + i for i, name in enumerate(fillers)}  # WordPiece / BPE: token -> id
    padded = Tokenizer.from_str(json.dumps(state))
    if padded.get_vocab_size() != size + missing:
        raise ValueError(f"padding the vocabulary to {size + missing} gave {padded.get_vocab_size()} tokens")
    return padded


def _text_batches(
    cfg: TokenizerConfig, sample: list[ShardSample], sink: MetricSink, total: int
) -> Iterator[list[str]]:
    """Batches of the sampled documents' texts, in corpus order."""
    done = 0
    for shard in sample:
        if shard.rows is None:
            batches = (texts for _, texts in iter_shard_batches(shard.path, cfg.batch_docs))
        else:
            chunks = (
                shard.rows[lo : lo + cfg.batch_docs] for lo in range(0, len(shard.rows), cfg.batch_docs)
            )
            batches = (read_rows(shard.path, rows, "text") for rows in chunks)
        for texts in batches:
            yield texts
            done += len(texts)
            sink.progress(done, total)


def metaspace_layout(cfg: TokenizerConfig) -> bool:
    """SentencePiece's layout: word starts marked with "▁", nothing split off, lossless decoding.

    Unigram always; BPE for the T5 family, whose targets ("not_equivalent", "3.8") must decode to
    exactly their text. BERT's BPE and WordPiece split punctuation off and mark continuations ##.
    """
    return cfg.algorithm == "unigram" or (cfg.algorithm == "bpe" and cfg.family == "t5")


def _new_tokenizer(cfg: TokenizerConfig, specials: SpecialTokens) -> Tokenizer:
    """Untrained tokenizer: model, BERT normalizer, pre-tokenizer and decoder for the algorithm."""
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=cfg.strip_accents, lowercase=cfg.lowercase
    )
    if metaspace_layout(cfg):
        # Pieces carry no continuation marker, so word boundaries travel as "▁" instead.
        model = models.Unigram() if cfg.algorithm == "unigram" else models.BPE(unk_token=specials.unk)
        tokenizer = Tokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    else:
        model = (
            models.WordPiece(unk_token=specials.unk, continuing_subword_prefix=_SUBWORD_PREFIX)
            if cfg.algorithm == "wordpiece"
            else models.BPE(unk_token=specials.unk, continuing_subword_prefix=_SUBWORD_PREFIX)
        )
        tokenizer = Tokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix=_SUBWORD_PREFIX, cleanup=True)
    tokenizer.normalizer = normalizer
    return tokenizer


def kept_alphabet(cfg: TokenizerConfig, tokenizer: Tokenizer, sample: list[ShardSample]) -> list[str]:
    """The characters a WordPiece/BPE vocabulary starts from, chosen here, sorted.

    Why: the tokenizers trainer keeps the ``limit_alphabet`` most frequent characters and breaks
    ties at the cut in the order of a hash map, which changes from one process to the next; it
    also creates the ``##c`` continuation pieces lazily while iterating a hash map of words
    (huggingface/tokenizers#1794). Either way the same corpus gave another vocabulary (on the
    Wikipedia slice, 60 of 1,000 characters differed between two runs), and a re-run after a
    crash another model. So the alphabet is counted here, on the normalized text like the
    trainer's: the ``limit_alphabet`` most frequent characters, ties at the cut included. The
    trainer gets exactly these as its initial alphabet, and their ``##c`` pieces, up front.
    """
    counts: Counter[str] = Counter()
    normalizer = tokenizer.normalizer
    for texts in _text_batches(cfg, sample, NullSink(), 0):
        for text in texts:
            counts.update(normalizer.normalize_str(text) if normalizer is not None else text)
    for space in [c for c in counts if c.isspace()]:
        del counts[space]
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    cut = ranked[min(cfg.limit_alphabet, len(ranked)) - 1][1] if ranked else 0
    return sorted(c for c, n in ranked if n >= cut)


def _unmark_special(tokenizer: Tokenizer, specials: SpecialTokens, pieces: list[str]) -> Tokenizer:
    """The pieces were passed as special tokens only to fix their ids: make them ordinary vocabulary."""
    if not pieces:
        return tokenizer
    data = json.loads(tokenizer.to_str())
    keep = set(specials.tokens)
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in keep]
    return Tokenizer.from_str(json.dumps(data))


def _trainer(
    cfg: TokenizerConfig, specials: SpecialTokens, chars: Sequence[str] = (), pieces: Sequence[str] = ()
) -> trainers.Trainer:
    """Trainer that puts the special tokens first, in order, so they get ids 0, 1, ..., then ``pieces``.

    WordPiece/BPE start from exactly ``chars`` (``kept_alphabet``): they are the initial alphabet
    and ``limit_alphabet`` is their number, so the trainer's own cut keeps them all and no other.

    A T5-family tokenizer also starts from every printable ASCII character: T5 writes its answers
    as text (class words such as ``not_equivalent``, STS-B scores such as ``3.8``, the prompts'
    ``sentence1:``), so a character the corpus happens to lack must not become <unk>, which no
    decoded output could ever match.
    """
    tokens = list(specials.tokens)
    alphabet = _PRINTABLE if specials.family == "t5" else []
    if cfg.vocab_size <= len(tokens) + len(alphabet):
        raise ValueError(
            f"TokenizerConfig.vocab_size={cfg.vocab_size} leaves no room beside the {len(tokens)} "
            f"special tokens of the {specials.family} family"
            + (f" and its {len(alphabet)} printable characters" if alphabet else "")
        )
    if cfg.algorithm == "unigram":
        return trainers.UnigramTrainer(
            vocab_size=cfg.vocab_size, special_tokens=tokens, unk_token=specials.unk, show_progress=False,
            initial_alphabet=alphabet,
        )  # fmt: skip
    kind = trainers.WordPieceTrainer if cfg.algorithm == "wordpiece" else trainers.BpeTrainer
    if metaspace_layout(cfg):  # SentencePiece-style BPE: pieces start with the word marker, no ## form
        start, prefix = sorted({*alphabet, *chars, _METASPACE}), {}
    else:
        start, prefix = sorted({*alphabet, *chars}), {"continuing_subword_prefix": _SUBWORD_PREFIX}
    return kind(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        limit_alphabet=len(start),
        special_tokens=[*tokens, *pieces],
        initial_alphabet=start,
        show_progress=False,
        **prefix,
    )


def _template(specials: SpecialTokens) -> processors.TemplateProcessing:
    """BERT: [CLS] A [SEP] for one segment, [CLS] A [SEP] B [SEP] with type id 1 on B for pairs.
    T5: A </s> and A </s> B </s> (T5 writes a pair into one text; the template is for completeness)."""
    if specials.family == "t5":
        return processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", specials.separator)]
        )
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )


def _check_special_ids(tokenizer: Tokenizer, where: str, specials: SpecialTokens) -> None:
    for expected, token in enumerate(specials.tokens):
        got = tokenizer.token_to_id(token)
        if got != expected:
            raise ValueError(f"{where}: special token {token} has id {got}, expected {expected}")


def _special_map(specials: SpecialTokens) -> dict[str, object]:
    """special_tokens_map.json: transformers' names for the family's tokens."""
    if specials.family == "t5":
        names = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        return names | {"additional_special_tokens": list(specials.tokens[len(specials.keys) :])}
    return {
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }  # fmt: skip


def _save(cfg: TokenizerConfig, specials: SpecialTokens, tokenizer: Tokenizer, out: Path) -> None:
    """tokenizer.json plus the files transformers reads (vocab.txt, tokenizer_config, special map)."""
    tokenizer.save(str(out / "tokenizer.json"))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    special_map = _special_map(specials)
    # BertTokenizerFast rebuilds a WordPiece model, which is only right for wordpiece vocabularies.
    bert_wordpiece = cfg.algorithm == "wordpiece" and specials.family == "bert"
    tokenizer_class = "BertTokenizerFast" if bert_wordpiece else "PreTrainedTokenizerFast"
    hf_config = {
        "tokenizer_class": tokenizer_class,
        "do_lower_case": cfg.lowercase,
        "strip_accents": cfg.strip_accents,
        "tokenize_chinese_chars": True,
        "model_max_length": cfg.model_max_length,
        "clean_up_tokenization_spaces": True,
        **special_map,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(hf_config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))


train_tokenizer = Stage("tokenizer", build_tokenizer, log_files=TOKENIZER_FILES)
