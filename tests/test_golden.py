"""Golden losses: the tiny model's first 200 training losses on a fixed batch stream are committed.

Any silent change to masking, the model, the optimiser, the schedule or the loop changes these
numbers and fails this test. A deliberate change regenerates the file
(``BERTFLOW_UPDATE_GOLDEN=1 pytest tests/test_golden.py``) and says why in its commit.

Tolerance: 2e-3 absolute per step. Same code on the same CPU reproduces the file bit for bit;
the slack is for other CPUs and BLAS builds, whose float rounding differs (measured drift well
below 1e-4 over the 200 steps here), and is still far below what a real change does (a masking
or optimiser change moves the losses by 1e-2 or more within a few steps).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import EncoderConfig
from models.pretraining import BertForMaskedLM
from tasks.engine.data import MLMBatchSource, PackedSequences
from tasks.engine.loop import fit
from tasks.engine.objectives import MLMObjective
from tasks.engine.settings import TrainSettings
from tasks.sink import MemorySink

GOLDEN = Path(__file__).parent / "golden" / "tiny_mlm_losses.json"
STEPS = 200
TOLERANCE = 2e-3


def packed_rows(directory: Path) -> PackedSequences:
    """64 rows of 32 tokens counting up from a seeded start: a masked token is its neighbour + 1."""
    rng = np.random.default_rng(1234)
    rows = np.zeros((64, 32), dtype=np.uint16)
    for r in range(64):
        start = int(rng.integers(5, 40))
        body = [(start + k) % 59 + 5 for k in range(29)]  # each token is its left neighbour + 1
        rows[r, : 1 + len(body) + 1] = [2, *body, 3]
    rows.tofile(directory / "train.bin")
    meta = {"dtype": "uint16", "seq_len": 32, "vocab_size": 64, "splits": {"train": 64}}
    meta |= {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}
    (directory / "pack.json").write_text(json.dumps(meta))
    return PackedSequences(directory, "train")


def losses(tmp_path: Path) -> list[float]:
    cfg = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                        max_position=32, dropout=0.1, attention_dropout=0.1)  # fmt: skip
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg)
    source = MLMBatchSource(packed_rows(tmp_path), 8, seed=0, mask_rate=0.15)
    sink = MemorySink()
    settings = TrainSettings(max_steps=STEPS, lr=1e-2, warmup_ratio=0.1, log_every=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order
    try:
        fit(model, MLMObjective(), source, settings, sink, seed=0)
    finally:
        torch.set_num_threads(threads)
    return [v for _, v in sink.series("loss")]


def test_first_200_losses_match_the_committed_curve(tmp_path: Path) -> None:
    got = losses(tmp_path)
    assert len(got) == STEPS
    if os.environ.get("BERTFLOW_UPDATE_GOLDEN") == "1":
        record = {"steps": STEPS, "tolerance": TOLERANCE, "losses": got}
        GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["losses"]
    worst = max(abs(a - b) for a, b in zip(got, golden, strict=True))
    off = [i for i, (a, b) in enumerate(zip(got, golden, strict=True)) if abs(a - b) > TOLERANCE]
    first_bad = off[0] if off else None
    assert first_bad is None, f"step {first_bad + 1}: {got[first_bad]} vs golden {golden[first_bad]}"
    assert worst <= TOLERANCE
    assert golden[-1] < golden[0] - 0.5  # the curve itself is a learning curve, not noise


def test_the_golden_check_catches_a_small_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tolerance is tight enough to see a 1 % change of the learning rate."""
    golden = json.loads(GOLDEN.read_text())["losses"]
    original = TrainSettings.__init__

    def slightly_other_lr(self, **kw):
        original(self, **{**kw, "lr": kw["lr"] * 1.01})

    monkeypatch.setattr(TrainSettings, "__init__", slightly_other_lr)
    got = losses(tmp_path)
    assert max(abs(a - b) for a, b in zip(got, golden, strict=True)) > TOLERANCE
