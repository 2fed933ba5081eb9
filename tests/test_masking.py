"""Dynamic MLM masking and the deterministic packed-data batch source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.engine.data import MLMBatchSource, PackedDataError, PackedSequences, trim_padding
from tasks.engine.masking import IGNORE_INDEX, mask_tokens

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 1000


def random_rows(rows: int, cols: int, seed: int) -> torch.Tensor:
    """[CLS] w w ... [SEP] [PAD]...: regular ids with a random amount of trailing padding per row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIALS), VOCAB, size=(rows, cols))
    ids[:, 0] = CLS
    for r, length in enumerate(rng.integers(cols // 2, cols, size=rows)):
        ids[r, length - 1] = SEP
        ids[r, length:] = PAD
    return torch.from_numpy(ids)


def mask(ids: torch.Tensor, seed: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return mask_tokens(ids, generator=gen, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS, **kwargs)


def test_mask_statistics_follow_the_80_10_10_rule() -> None:
    ids = random_rows(64, 128, seed=0)
    regular = ~torch.isin(ids, torch.tensor(SPECIALS))
    selected = n_regular = to_mask = to_random = kept = 0
    for seed in range(20):
        masked, labels = mask(ids, seed)
        chosen = labels != IGNORE_INDEX
        assert torch.equal(labels[chosen], ids[chosen])  # labels hold the original ids
        assert not (chosen & ~regular).any(), "a special token was selected"
        assert torch.equal(masked[~chosen], ids[~chosen])  # unselected tokens are untouched
        selected += int(chosen.sum())
        n_regular += int(regular.sum())
        to_mask += int((masked[chosen] == MASK).sum())
        kept += int((masked[chosen] == ids[chosen]).sum())
        to_random += int(((masked[chosen] != MASK) & (masked[chosen] != ids[chosen])).sum())
    assert selected / n_regular == pytest.approx(0.15, abs=0.005)
    assert to_mask / selected == pytest.approx(0.8, abs=0.015)
    assert to_random / selected == pytest.approx(0.1, abs=0.015)
    assert kept / selected == pytest.approx(0.1, abs=0.015)


def test_random_replacements_are_never_special_tokens() -> None:
    ids = random_rows(32, 64, seed=1)
    masked, labels = mask(ids, 0, replace_prob=0.0, random_prob=1.0)  # every selected token randomised
    chosen = labels != IGNORE_INDEX
    assert chosen.any()
    assert not torch.isin(masked[chosen], torch.tensor(SPECIALS)).any()


def test_same_generator_seed_same_mask_other_seed_other_mask() -> None:
    ids = random_rows(8, 64, seed=2)
    a, la = mask(ids, 7)
    b, lb = mask(ids, 7)
    _, lc = mask(ids, 8)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(la, lc)


def test_invalid_rates_are_rejected() -> None:
    ids = random_rows(2, 8, seed=3)
    with pytest.raises(ValueError, match="mask_rate"):
        mask(ids, 0, mask_rate=0.0)
    with pytest.raises(ValueError, match="sum to <= 1"):
        mask(ids, 0, replace_prob=0.8, random_prob=0.3)


def write_pack(dir: Path, rows: np.ndarray, dtype: str = "uint16") -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    rows.astype(dtype).tofile(dir / "train.bin")
    np.zeros((0, rows.shape[1]), dtype=dtype).tofile(dir / "validation.bin")
    specials = {"pad_id": PAD, "unk_id": UNK, "cls_id": CLS, "sep_id": SEP, "mask_id": MASK}
    splits = {"train": len(rows), "validation": 0}
    meta = {"dtype": dtype, "seq_len": rows.shape[1], "vocab_size": VOCAB, **specials, "splits": splits}
    (dir / "pack.json").write_text(json.dumps(meta))
    return dir


def test_batch_is_a_pure_function_of_seed_and_step(tmp_path: Path) -> None:
    packed = PackedSequences(write_pack(tmp_path, random_rows(10, 32, seed=4).numpy()), "train")
    a = MLMBatchSource(packed, batch_size=4, seed=11)
    b = MLMBatchSource(packed, batch_size=4, seed=11)
    for step in (5, 0, 3):  # any order, fresh object: same batch
        assert all(torch.equal(a.batch(step)[k], b.batch(step)[k]) for k in a.batch(step))
    assert not torch.equal(a.batch(0)["input_ids"], a.batch(1)["input_ids"])
    other_seed = MLMBatchSource(packed, batch_size=4, seed=12)
    assert not np.array_equal(a.permutation(0), other_seed.permutation(0))


def test_each_epoch_is_a_permutation_with_fresh_masks(tmp_path: Path) -> None:
    rows = random_rows(12, 32, seed=5).numpy()
    packed = PackedSequences(write_pack(tmp_path, rows), "train")
    source = MLMBatchSource(packed, batch_size=4, seed=0)
    epoch0 = np.concatenate([source.row_indices(s) for s in range(3)])
    epoch1 = np.concatenate([source.row_indices(s) for s in range(3, 6)])
    assert sorted(epoch0) == list(range(12)) and sorted(epoch1) == list(range(12))
    assert not np.array_equal(epoch0, epoch1)  # a new order every epoch
    # the same row seen in two epochs gets two different masks
    row = int(epoch0[0])
    step1, pos1 = divmod(int(np.where(epoch1 == row)[0][0]), 4)
    labels0 = source.batch(0)["labels"][0]
    labels1 = source.batch(3 + step1)["labels"][pos1]
    width = min(len(labels0), len(labels1))
    assert not torch.equal(labels0[:width], labels1[:width])


def test_batches_straddle_epochs_when_rows_do_not_divide(tmp_path: Path) -> None:
    packed = PackedSequences(write_pack(tmp_path, random_rows(5, 16, seed=6).numpy()), "train")
    source = MLMBatchSource(packed, batch_size=3, seed=0)
    stream = np.concatenate([source.row_indices(s) for s in range(5)])  # 15 rows = 3 epochs
    for epoch in range(3):
        assert np.array_equal(stream[epoch * 5 : (epoch + 1) * 5], source.permutation(epoch))


def test_batch_fields_and_padding_trim(tmp_path: Path) -> None:
    rows = random_rows(6, 32, seed=7).numpy()
    rows[:, 20:] = PAD  # at least 12 all-pad columns in every batch
    packed = PackedSequences(write_pack(tmp_path, rows), "train")
    batch = MLMBatchSource(packed, batch_size=3, seed=0).batch(0)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    B, T = batch["input_ids"].shape
    assert B == 3 and T <= 20
    assert all(v.shape == (B, T) and v.dtype == torch.long for v in batch.values())
    assert batch["attention_mask"][:, -1].any()  # the last kept column holds a real token
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert (batch["token_type_ids"] == 0).all()


def test_trim_padding_keeps_at_least_one_column() -> None:
    assert trim_padding(torch.zeros(2, 5, dtype=torch.long), PAD).shape == (2, 1)
    ids = torch.tensor([[2, 7, 0, 0], [2, 0, 0, 0]])
    assert torch.equal(trim_padding(ids, PAD), ids[:, :2])


def test_packed_reader_rejects_wrong_file_size_and_missing_split(tmp_path: Path) -> None:
    write_pack(tmp_path, random_rows(4, 16, seed=8).numpy())
    with pytest.raises(PackedDataError, match="has no 'test'"):
        PackedSequences(tmp_path, "test")
    (tmp_path / "train.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(PackedDataError, match=r"train\.bin: 10 bytes, expected 128"):
        PackedSequences(tmp_path, "train")


def test_packed_reader_reads_int32_rows(tmp_path: Path) -> None:
    rows = random_rows(3, 8, seed=9).numpy()
    packed = PackedSequences(write_pack(tmp_path, rows, dtype="int32"), "train")
    assert torch.equal(packed.take(np.array([2, 0])), torch.from_numpy(rows[[2, 0]]))


# ---- whole-word and span masking ------------------------------------------------------------

from tasks.engine.masking import continuation_lookup, select_spans, span_length_probs  # noqa: E402

CONTINUATION = torch.zeros(VOCAB, dtype=torch.bool)
CONTINUATION[500:] = True  # ids >= 500 are "##" pieces in these tests


def words_of(row: torch.Tensor) -> list[list[int]]:
    """Positions of each word in a row: a regular id < 500 opens a word, ids >= 500 continue it."""
    words: list[list[int]] = []
    for t, token in enumerate(row.tolist()):
        if token in SPECIALS:
            words.append([])
        elif token >= 500 and words and words[-1]:
            words[-1].append(t)
        else:
            words.append([t])
    return [w for w in words if w]


def test_whole_word_masking_selects_every_piece_of_a_chosen_word() -> None:
    ids = random_rows(32, 64, seed=10)
    selected = n_regular = 0
    for seed in range(5):
        _, labels = mask(ids, seed, strategy="word", is_continuation=CONTINUATION, mask_rate=0.3)
        chosen = labels != IGNORE_INDEX
        for r in range(ids.size(0)):
            for word in words_of(ids[r]):
                assert len({bool(chosen[r, t]) for t in word}) == 1, "a word was partly masked"
        assert not (chosen & torch.isin(ids, torch.tensor(SPECIALS))).any()
        selected += int(chosen.sum())
        n_regular += int((~torch.isin(ids, torch.tensor(SPECIALS))).sum())
    assert selected / n_regular == pytest.approx(0.3, abs=0.03)
    with pytest.raises(ValueError, match="is_continuation"):
        mask(ids, 0, strategy="word")


def test_span_lengths_follow_spanberts_truncated_geometric() -> None:
    probs = span_length_probs(0.2, 10)
    assert probs.shape == (10,) and float(probs.sum()) == pytest.approx(1.0)
    assert float((probs * torch.arange(1, 11)).sum()) == pytest.approx(3.8, abs=0.05)  # SpanBERT's mean
    assert float(probs[1] / probs[0]) == pytest.approx(0.8)


def test_span_masking_hits_the_rate_with_contiguous_whole_word_spans() -> None:
    ids = random_rows(16, 128, seed=11)
    ids[:, 60] = SEP  # a document boundary inside every row
    gen = torch.Generator().manual_seed(0)
    candidates = ~torch.isin(ids, torch.tensor(SPECIALS))
    chosen = select_spans(ids, candidates, CONTINUATION, gen, mask_rate=0.15)
    assert not (chosen & ~candidates).any()
    for r in range(ids.size(0)):
        budget = round(0.15 * int(candidates[r].sum()))
        longest_word = max(len(w) for w in words_of(ids[r]))
        assert budget <= int(chosen[r].sum()) <= budget + longest_word
        for word in words_of(ids[r]):
            assert len({bool(chosen[r, t]) for t in word}) == 1
    # spans, not scattered tokens: masked runs average well over one word
    flat = torch.nn.functional.pad(chosen, (1, 0)).int()
    runs = int((flat[:, 1:] - flat[:, :-1] == 1).sum())
    assert int(chosen.sum()) / runs > 3.0


def test_span_masking_through_mask_tokens_and_high_rates() -> None:
    ids = random_rows(8, 128, seed=12)
    masked, labels = mask(ids, 0, strategy="span", is_continuation=CONTINUATION, mask_rate=0.4)
    chosen = labels != IGNORE_INDEX
    n_regular = int((~torch.isin(ids, torch.tensor(SPECIALS))).sum())
    assert int(chosen.sum()) / n_regular == pytest.approx(0.4, abs=0.05)
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_continuation_lookup_from_a_wordpiece_vocab() -> None:
    lookup = continuation_lookup({"[PAD]": 0, "play": 5, "##ing": 6, "##": 7, "#": 8}, 10)
    assert lookup.tolist() == [False] * 6 + [True] + [False] * 3


# ---- sentence pairs ------------------------------------------------------------------------

from tasks.engine.data import PairBatchSource  # noqa: E402


def doc_rows() -> np.ndarray:
    """Rows [CLS] d [SEP] d [SEP] ... [PAD]: documents of increasing ids, so order is checkable."""
    rows = np.zeros((6, 24), dtype=np.int64)
    for r in range(6):
        row = [CLS, *range(10 + r * 30, 18 + r * 30), SEP, *range(20 + r * 30, 30 + r * 30), SEP]
        rows[r, : len(row)] = row
    return rows


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_pair_rows_have_segments_types_and_labels(task: str, tmp_path: Path) -> None:
    rows = doc_rows()
    source = PairBatchSource(PackedSequences(write_pack(tmp_path, rows), "train"), 6, seed=0, task=task)
    gen = torch.Generator().manual_seed(1)
    labels = []
    for row in np.tile(rows, (5, 1)):
        ids, types, label = source.pair_row(row, gen)
        labels.append(label)
        real = ids[ids != PAD]
        assert real[0] == CLS and real[-1] == SEP and len(ids) == 24
        boundary = int(np.flatnonzero(types)[0])  # first token of segment B
        assert (
            real[boundary - 1] == SEP
            and (types[:boundary] == 0).all()
            and (types[boundary : len(real)] == 1).all()
        )
        first, second = real[1:boundary], real[boundary:]
        content = [t for t in row[1:] if t not in (PAD, SEP)]
        words = lambda seg: [t for t in seg if t != SEP]  # noqa: E731
        if label == 0:  # in order: A then B is the row itself, cut inside a document
            assert words(first) + words(second) == content
        elif task == "sop":  # swapped
            assert words(second) + words(first) == content
        else:  # nsp: A is a prefix of the row, B comes from elsewhere
            assert words(first) == content[: len(words(first))]
    assert 10 <= sum(labels) <= 20  # roughly balanced
    batch = source.batch(0)
    assert batch["pair_labels"].shape == (6,) and batch["token_type_ids"].max() == 1
