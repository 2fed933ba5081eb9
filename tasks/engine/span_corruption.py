"""T5's span-corruption objective: drop random spans from a row, the encoder sees the rest with one
sentinel per dropped span, the decoder writes each sentinel followed by the span it stands for.

    row:     Thank you for inviting me to your party last week .
    inputs:  Thank you <X> me to your party <Y> week . </s>
    targets: <X> for inviting <Y> last </s>

As in T5, a row of L tokens gets exactly round(L * noise_density) noise tokens in
round(noise / mean_span_length) spans (at least one); where the spans and the kept stretches
between them begin is random, each stretch at least one token long, and the row starts with
kept tokens. One departure: T5's own code always ends a row inside a span (its pattern is
kept, noise, ..., kept, noise), so the last token is noise in every row. Here the pattern is
read as a circle and cut before a random kept token, which leaves the counts unchanged and the
end of a row no more likely to be noise than its middle. Sentinels are used in order (the first
span gets the first sentinel). Corruption is drawn from the caller's generator each time a row
is seen, so every epoch masks afresh.

``raw_length`` answers the packing question: how many corpus tokens a row must hold so the
corrupted input fills the encoder exactly (T5: 568 raw tokens for 512 inputs and 114 targets;
here 141 for 128 and 29). ``SpanBatchSource`` is the batch source the loop trains on: packed
rows as in every other objective (a pure function of (seed, step), so resume is exact), each
row corrupted with a generator seeded by (seed, step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tasks.engine.data import RowStream, seeded_generator
from tasks.engine.masking import IGNORE_INDEX

_CORRUPTION_STREAM = 3  # beside data.py's permutation / mask / pair streams


@dataclass(frozen=True)
class SpanCorruption:
    """The objective's two knobs (T5's defaults) and its special ids."""

    sentinel_ids: tuple[int, ...]  # <extra_id_0>, <extra_id_1>, ... in the order spans use them
    eos_id: int
    pad_id: int
    noise_density: float = 0.15
    mean_span_length: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"SpanCorruption.noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_span_length < 1.0:
            raise ValueError(f"SpanCorruption.mean_span_length must be >= 1, got {self.mean_span_length}")
        if not self.sentinel_ids:
            raise ValueError("SpanCorruption needs sentinel ids (the tokenizer's <extra_id_N> tokens)")

    def counts(self, length: int) -> tuple[int, int]:
        """(noise tokens, noise spans) for a row of ``length`` tokens."""
        if length < 2:
            raise ValueError(f"span corruption needs rows of at least 2 tokens, got {length}")
        noise = min(max(round(length * self.noise_density), 1), length - 1)
        spans = max(round(noise / self.mean_span_length), 1)
        if spans > len(self.sentinel_ids):
            raise ValueError(
                f"a row of {length} tokens needs {spans} sentinels; "
                f"the tokenizer has {len(self.sentinel_ids)}"
            )
        return noise, spans

    def lengths(self, length: int) -> tuple[int, int]:
        """(input length, target length), each with its </s>, for a row of ``length`` raw tokens."""
        noise, spans = self.counts(length)
        return length - noise + spans + 1, noise + spans + 1

    def raw_length(self, inputs_length: int) -> tuple[int, int]:
        """The longest raw row whose corrupted input fits ``inputs_length``, and its target length."""
        raw = inputs_length
        while self.lengths(raw + 1)[0] <= inputs_length:
            raw += 1
        while raw > 2 and self.lengths(raw)[0] > inputs_length:
            raw -= 1
        return raw, self.lengths(raw)[1]

    def noise_mask(self, length: int, generator: torch.Generator) -> Tensor:
        """(length,) bool: True on the tokens dropped into spans."""
        noise, spans = self.counts(length)
        noise_lengths = _segment(noise, spans, generator)
        kept_lengths = _segment(length - noise, spans, generator)
        stretches = torch.stack([kept_lengths, noise_lengths], dim=1).flatten()  # kept, noise, kept, ...
        circle = torch.repeat_interleave(torch.tensor([False, True]).repeat(spans), stretches)
        kept = (~circle).nonzero().flatten()
        start = kept[torch.randint(len(kept), (1,), generator=generator)]
        return circle.roll(-int(start))  # starts at a random kept token: the last token is not always noise

    def corrupt(self, row: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(inputs, targets) of one 1-D row of token ids, each ending with </s>."""
        mask = self.noise_mask(row.numel(), generator)
        first = mask & ~torch.cat([mask.new_zeros(1), mask[:-1]])  # first token of each span
        span_index = torch.cumsum(first.long(), 0) - 1
        sentinels = torch.tensor(self.sentinel_ids, dtype=row.dtype)[span_index.clamp(min=0)]
        eos = row.new_full((1,), self.eos_id)
        inputs = torch.where(first, sentinels, row)[~mask | first]  # a span shrinks to its sentinel
        targets = _interleave_targets(row, mask, first, sentinels)
        return torch.cat([inputs, eos]), torch.cat([targets, eos])

    def batch(self, rows: Sequence[Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """(B, L) raw rows -> padded ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding)."""
        pairs = [self.corrupt(row, generator) for row in rows]
        inputs = _pad([p[0] for p in pairs], self.pad_id)
        labels = _pad([p[1] for p in pairs], IGNORE_INDEX)
        return {"input_ids": inputs, "attention_mask": (inputs != self.pad_id).long(), "labels": labels}


def _interleave_targets(row: Tensor, mask: Tensor, first: Tensor, sentinels: Tensor) -> Tensor:
    """Each span's sentinel followed by the span's tokens, spans in order."""
    out = torch.stack([sentinels, row], dim=1)  # (L, 2): [sentinel, token] per position
    keep = torch.stack([first, mask], dim=1)  # the sentinel before a span's first token, every noise token
    return out[keep]


def _segment(total: int, pieces: int, generator: torch.Generator) -> Tensor:
    """``total`` split into ``pieces`` positive lengths, uniformly over all such splits."""
    if pieces > total:
        raise ValueError(f"cannot split {total} tokens into {pieces} non-empty stretches")
    cuts = torch.randperm(total - 1, generator=generator)[: pieces - 1] + 1
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), cuts.sort().values, torch.tensor([total])])
    return bounds.diff()


def _pad(rows: Sequence[Tensor], value: int) -> Tensor:
    width = max(r.numel() for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


def recover(inputs: Tensor, targets: Tensor, sentinel_ids: Sequence[int], eos_id: int) -> list[int]:
    """The original row from one (inputs, targets) pair: every sentinel in the input is replaced by the
    tokens after the same sentinel in the targets (the check that nothing was lost or reordered).

    Only the closing </s> of each is dropped: a packed row holds one </s> after every document,
    and those are text like any other token here.
    """
    sentinels = set(sentinel_ids)
    spans: dict[int, list[int]] = {}
    current: int | None = None
    for token in _without_closing(targets, eos_id):
        if token in sentinels:
            current = token
            spans[current] = []
        elif current is not None:
            spans[current].append(token)
    row: list[int] = []
    for token in _without_closing(inputs, eos_id):
        row.extend(spans[token] if token in sentinels else [token])
    return row


def _without_closing(ids: Tensor, eos_id: int) -> list[int]:
    values = ids.tolist()
    if not values or values[-1] != eos_id:
        raise ValueError("a span-corrupted sequence must end with </s>")
    return values[:-1]


@dataclass
class SpanBatchSource(RowStream):
    """Span-corrupted batches of a T5-family packed split; ``batch(step)`` depends only on (seed, step).

    A row's trailing <pad> (the last row of a split) is cut before corruption, so padding is
    never noise and never a target.
    """

    noise_density: float = 0.15
    mean_span_length: float = 3.0
    corruption: SpanCorruption = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_family(
            "t5", "span corruption needs T5's sentinels", "train the tokenizer with tokenizer.family = 't5'"
        )
        special = self.packed.special_ids
        self.corruption = SpanCorruption(
            self.packed.sentinel_ids, special["eos_id"], special["pad_id"], self.noise_density,
            self.mean_span_length,
        )  # fmt: skip
        self.corruption.counts(self.packed.seq_len)  # a row too short for the sentinels fails here, not later

    def batch(self, step: int) -> dict[str, Tensor]:
        """input_ids / attention_mask (B, S) and labels (B, T): each row's corruption, padded."""
        rows = self.packed.take(self.row_indices(step))  # (B, L)
        lengths = (rows != self.pad_id).sum(dim=1).clamp(min=2).tolist()  # pads only trail a row
        generator = seeded_generator(self.seed, _CORRUPTION_STREAM, step)
        return self.corruption.batch([row[:n] for row, n in zip(rows, lengths, strict=True)], generator)
