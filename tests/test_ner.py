"""Named-entity recognition: CoNLL reader, IOB repair, sub-word alignment and windows, entity metric."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from word_tokenizer import word_tokenizer

from models.heads import HeadSpec
from models.multitask import MultiTaskModel
from tasks.downstream.conll import ConllFormatError, TokenExample, read_conll_file
from tasks.downstream.features import IGNORE, collate, encode_examples, read_examples, task_file
from tasks.downstream.metrics.entities import EntityMetric, entity_scores
from tasks.downstream.scoring import score_tagging, word_tags
from tasks.downstream.tags import chunks, to_iob2
from tasks.downstream.tasks import get_task
from tasks.engine.finetune_objectives import head_loss

WIKIANN = get_task("WikiANN-en")
CONLL = get_task("CoNLL-2003")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- tags -----------------------------------------------------------------------------------------


def test_iob1_becomes_iob2_and_the_repairs_are_counted() -> None:
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]
    assert to_iob2(iob1) == (("B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"), 3)
    assert to_iob2(["B-PER", "I-PER", "O"]) == (("B-PER", "I-PER", "O"), 0)  # IOB2 is left alone


def test_chunks_by_hand() -> None:
    assert chunks(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert chunks(["O", "I-ORG", "I-ORG", "I-PER"]) == [("ORG", 1, 2), ("PER", 3, 3)]  # conlleval repair
    assert chunks(["B-LOC", "B-LOC", "I-LOC"]) == [("LOC", 0, 0), ("LOC", 1, 2)]


def test_entity_metric_by_hand() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]  # PER right, LOC typed wrong, ORG repaired
    scores = EntityMetric().compute(predictions=pred, references=gold)
    assert scores["precision"] == pytest.approx(100 * 2 / 3)
    assert scores["recall"] == pytest.approx(100 * 2 / 3)
    assert scores["f1"] == pytest.approx(100 * 2 / 3)
    assert scores["PER_f1"] == 100.0 and scores["LOC_recall"] == 0.0 and scores["LOC_support"] == 1.0
    assert scores["ORG_precision"] == 50.0  # one of the two predicted ORGs is right
    assert scores["repaired_tags"] == 1.0


def random_tags(rng: random.Random, n: int) -> list[str]:
    """Tags drawn freely, so invalid sequences (I-X after O or after another type) are common."""
    return [
        rng.choice(["O", "O", "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]) for _ in range(n)
    ]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # seqeval's report averages empty classes
def test_entity_metric_equals_seqeval_on_1000_random_cases() -> None:
    rng = random.Random(0)
    for case in range(1000):
        lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 6))]
        gold = [random_tags(rng, n) for n in lengths]
        pred = [
            random_tags(rng, n) if rng.random() < 0.7 else list(g) for n, g in zip(lengths, gold, strict=True)
        ]
        ours = entity_scores(pred, gold)
        assert ours["precision"] == pytest.approx(100 * precision_score(gold, pred, zero_division=0)), case
        assert ours["recall"] == pytest.approx(100 * recall_score(gold, pred, zero_division=0)), case
        assert ours["f1"] == pytest.approx(100 * f1_score(gold, pred, zero_division=0)), case
        report = classification_report(gold, pred, output_dict=True, zero_division=0)
        for kind in ("PER", "ORG", "LOC"):
            if kind in report:
                assert ours[f"{kind}_f1"] == pytest.approx(100 * report[kind]["f1-score"]), (case, kind)
                assert ours[f"{kind}_support"] == report[kind]["support"], (case, kind)


# --- reader ---------------------------------------------------------------------------------------


def test_wikiann_format_reads_sentences(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ner/wikiann-en/train.conll", "John\tB-PER\nlives\tO\nin\tO\nParis\tB-LOC\n\nHi\tO\n"
    )
    first, second = read_conll_file(path, WIKIANN)
    assert first == TokenExample("1", ("John", "lives", "in", "Paris"), ("B-PER", "O", "O", "B-LOC"))
    assert second.words == ("Hi",) and second.id == "6"


def test_conll2003_format_named_column_docstart_and_iob1(tmp_path: Path) -> None:
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\ncall NN I-NP O\n\n"
        "-DOCSTART- -X- -X- O\n\n"
        "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n"
    )
    path = write(tmp_path / "ner/conll2003/train.txt", text)
    assert task_file(tmp_path, CONLL, CONLL.train_file) == path
    first, second = read_examples(tmp_path, CONLL, CONLL.train_file)
    assert first.tags == ("B-ORG", "O", "B-MISC", "O")  # IOB1 -> IOB2, the NER column (not the chunk one)
    assert second.words == ("Peter", "Blackburn") and second.tags == ("B-PER", "I-PER")


@pytest.mark.parametrize(
    ("text", "spec", "error"),
    [
        ("John\tB-PER\nlives\n", WIKIANN, r"train.conll: line 2: a token with no tag"),
        (
            "John\tB-PER\nlives\tB-DATE\n",
            WIKIANN,
            r"line 2: column 'tag': tag 'B-DATE' is not one of WikiANN-en",
        ),
        ("John\tB-PER\nlives\tX\n", WIKIANN, r"line 2: column 'tag': tag 'X' is not O, B-TYPE or I-TYPE"),
        ("\n\n-DOCSTART-\tO\n\n", WIKIANN, r"train.conll: empty file, expected WikiANN-en sentences"),
        ("John\tNNP\tB-PER\nlives\tO\n", WIKIANN, r"line 2: 2 columns, but the file's lines have 3"),
        ("EU NNP I-ORG\n", CONLL, r"line 1: expected 4 columns \(token, pos, chunk, ner\), found 3"),
    ],
    ids=["no-tag", "unknown-tag", "malformed-tag", "empty", "mixed-columns", "conll-width"],
)
def test_bad_files_name_file_line_and_field(tmp_path: Path, text: str, spec, error: str) -> None:
    path = write(tmp_path / "train.conll", text)
    with pytest.raises(ConllFormatError, match=error):
        read_conll_file(path, spec)


# --- alignment and windows ------------------------------------------------------------------------

WORDS = ["john", "lives", "in", "paris", "new", "york", "cat", "##s", "big", "the"]


def example(n_words: int, seed: int) -> TokenExample:
    rng = random.Random(seed)
    words = [
        rng.choice(["John", "lives", "in", "Paris", "cats", "New", "York", "the"]) for _ in range(n_words)
    ]
    tags, _ = to_iob2(random_tags(rng, n_words))
    return TokenExample(str(seed), tuple(words), tags)


def one_hot_outputs(features) -> list[torch.Tensor]:
    """Logits that put all mass on each position's gold tag (a perfect model), for the round trip."""
    outputs = []
    for f in features:
        logits = torch.zeros(len(f.input_ids), len(WIKIANN.labels))
        for t, label in enumerate(f.labels):
            if label != IGNORE:
                logits[t, label] = 1.0
        outputs.append(logits.numpy())
    return outputs


@pytest.mark.parametrize(("n_words", "max_seq_len", "stride"), [(5, 32, 8), (40, 16, 5), (60, 12, 10)])
def test_alignment_and_windows_round_trip(n_words: int, max_seq_len: int, stride: int) -> None:
    tok = word_tokenizer(WORDS)
    examples = [example(n_words, seed) for seed in range(5)]
    features = encode_examples(tok, WIKIANN, examples, max_seq_len, stride)
    assert all(len(f.input_ids) <= max_seq_len for f in features)
    for i, e in enumerate(examples):
        windows = [f for f in features if f.example_index == i]
        owned = sorted(w for f in windows for w, own in zip(f.word_ids, f.owned, strict=True) if own)
        assert owned == list(range(len(e.words)))  # every word predicted by exactly one window
        for f in windows:  # the first sub-word of a word carries its tag, the others are ignored
            for t, (word, label) in enumerate(zip(f.word_ids, f.labels, strict=True)):
                assert label == (IGNORE if word < 0 else WIKIANN.labels.index(e.tags[word])), (i, t)
    if n_words > max_seq_len:
        assert len(features) > len(examples)  # long sentences were windowed, not cut
    scores, rows = score_tagging(WIKIANN, examples, features, one_hot_outputs(features))
    assert [r["prediction"] for r in rows] == [list(e.tags) for e in examples]
    assert scores["repaired_tags"] == 0.0 and scores["f1"] in (0.0, 100.0)


def test_a_word_with_several_sub_words_is_predicted_from_its_first() -> None:
    tok = word_tokenizer(["cat", "##s", "paris"])
    e = TokenExample("1", ("Cats", "Paris"), ("B-LOC", "B-LOC"))
    (f,) = encode_examples(tok, WIKIANN, [e], 16, 8)
    assert f.input_ids == (2, 5, 6, 7, 3) and f.word_ids == (-1, 0, -1, 1, -1)
    logits = torch.zeros(5, 7)
    logits[1, WIKIANN.labels.index("B-LOC")] = 1  # the first sub-word decides ...
    logits[2, WIKIANN.labels.index("B-PER")] = 9  # ... whatever the second one says
    logits[3, WIKIANN.labels.index("I-LOC")] = 1
    assert word_tags(WIKIANN, e, [(f, logits.numpy())]) == ["B-LOC", "I-LOC"]


def test_token_head_and_loss_ignore_unlabelled_positions() -> None:
    tok = word_tokenizer(WORDS)
    features = encode_examples(tok, WIKIANN, [example(6, 1), example(3, 2)], 32, 8)
    batch = collate(features)
    assert batch["labels"].shape == batch["input_ids"].shape and int(batch["labels"][1, -1]) == IGNORE
    torch.manual_seed(0)
    from models.config import EncoderConfig

    cfg = EncoderConfig(
        vocab_size=len(WORDS) + 5, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32
    )
    model = MultiTaskModel(cfg, {"WikiANN-en": HeadSpec("token", 7)})
    logits = model("WikiANN-en", batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    assert logits.shape == (*batch["input_ids"].shape, 7)
    loss = head_loss("token", logits, batch)
    labelled = batch["labels"] != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[labelled], batch["labels"][labelled])
    torch.testing.assert_close(loss, expected)
    none = head_loss("token", logits, {"labels": torch.full_like(batch["labels"], IGNORE)})
    assert float(none.detach()) == 0.0  # not NaN
