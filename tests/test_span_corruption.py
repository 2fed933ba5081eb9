"""T5 span corruption: the noise statistics match the settings, every row is recoverable from its
inputs and targets, sentinels come in order, and raw rows are sized so the inputs fill the encoder."""

from __future__ import annotations

import pytest
import torch

from tasks.engine.masking import IGNORE_INDEX as IGNORE
from tasks.engine.span_corruption import SpanCorruption, recover

VOCAB, EOS, PAD = 1000, 1, 0
SENTINELS = tuple(range(VOCAB - 1, VOCAB - 101, -1))  # <extra_id_0> is the last id, as in T5
SPANS = SpanCorruption(sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD)


def rows(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB - 100, (n, length), generator=torch.Generator().manual_seed(seed))


def test_ten_thousand_rows_have_the_set_noise_density_and_span_length_and_lose_nothing() -> None:
    raw, _ = SPANS.raw_length(128)
    g = torch.Generator().manual_seed(1)
    noise = spans = tokens = 0
    per_position = torch.zeros(raw)
    for row in rows(10_000, raw):
        inputs, targets = SPANS.corrupt(row, g)
        assert recover(inputs, targets, SENTINELS, EOS) == row.tolist()
        in_targets = [t for t in targets.tolist() if t in SENTINELS]
        assert in_targets == list(SENTINELS[: len(in_targets)])  # first span, first sentinel
        assert [t for t in inputs.tolist() if t in SENTINELS] == in_targets
        spans += len(in_targets)
        noise += targets.numel() - len(in_targets) - 1  # minus the sentinels and </s>
        tokens += row.numel()
        per_position += SPANS.noise_mask(raw, g).float()
    assert abs(noise / tokens - 0.15) <= 0.02 * 0.15
    assert abs(noise / spans - 3.0) <= 0.02 * 3.0
    rate = per_position / 10_000
    assert rate[0] == 0  # a row starts with kept tokens, as in T5
    assert rate[20:-20].min() > 0.13 and rate[20:-20].max() < 0.17  # away from the edges: uniform
    assert rate[-1] < 0.15  # T5's own code puts the last token in a span in every row; not here


def test_raw_rows_are_sized_so_inputs_fill_the_encoder() -> None:
    assert SPANS.raw_length(512) == (568, 114)  # T5's own figures for its 512-token inputs
    raw, target_length = SPANS.raw_length(128)
    assert (raw, target_length) == (141, 29)
    inputs, targets = SPANS.corrupt(rows(1, raw)[0], torch.Generator().manual_seed(0))
    assert (inputs.numel(), targets.numel()) == (128, 29)
    assert SPANS.lengths(raw + 1)[0] > 128  # one more raw token would not fit


def test_masks_are_redrawn_each_time_and_seeded() -> None:
    row = rows(1, 141)[0]
    a = SPANS.corrupt(row, torch.Generator().manual_seed(5))
    b = SPANS.corrupt(row, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    first, second = SPANS.corrupt(row, g), SPANS.corrupt(row, g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(first[0], second[0])  # the next epoch corrupts the row afresh


def test_a_batch_is_padded_with_ignored_labels() -> None:
    short = SpanCorruption(sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD, noise_density=0.3)
    out = short.batch(rows(4, 20), torch.Generator().manual_seed(0))
    assert out["input_ids"].shape[0] == 4 and out["labels"].shape[0] == 4
    assert out["attention_mask"].sum(1).tolist() == [20 - 6 + 2 + 1] * 4  # 6 noise tokens in 2 spans
    assert (out["labels"] == IGNORE).sum() == 0  # equal lengths here: nothing to pad
    ragged = short.batch([rows(1, 20)[0], rows(1, 10)[0]], torch.Generator().manual_seed(0))
    assert (ragged["labels"][1] == IGNORE).sum() > 0 and (ragged["input_ids"][1] == PAD).sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_density": 0.0}, "noise_density must be in"),
        ({"mean_span_length": 0.5}, "mean_span_length must be >= 1"),
        ({"sentinel_ids": ()}, "needs sentinel ids"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpanCorruption(**{"sentinel_ids": SENTINELS, "eos_id": EOS, "pad_id": PAD, **kwargs})


def test_too_few_sentinels_for_a_row_is_an_error() -> None:
    few = SpanCorruption(sentinel_ids=SENTINELS[:3], eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="needs 7 sentinels; the tokenizer has 3"):
        few.corrupt(rows(1, 141)[0], torch.Generator().manual_seed(0))
