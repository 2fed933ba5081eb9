"""A word-level tokenizer built in-test: the project's fixed special ids and BERT's templates.

Shared by the test modules that need a real `tokenizers.Tokenizer` without training one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, as tasks.data.tokenizer fixes them


def word_tokenizer(words: Sequence[str]) -> Tokenizer:
    """Lower-casing WordPiece whose vocabulary is the specials followed by ``words``."""
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return tok


def words_of(texts: Iterable[str]) -> list[str]:
    """The sorted distinct lower-cased words (BERT pre-tokenization) of ``texts``."""
    split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    return sorted({w for t in texts for w, _ in split(t.lower())})
