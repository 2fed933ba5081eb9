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
