"""The t5-tiny demo preset transfers: pre-trained T5 beats random init on the demo SST-2 task.

The T5 counterpart of test_demo.py: the preset's data, tokenizer, model, optimiser and 1,500
span-corruption steps, then (``BUDGET``, to fit the suite) SST-2 fine-tuned alone for 300 steps
instead of the four-task mixture's 600, from the pre-trained model and, on the same budget, from
random init. The synthetic dev set's held-out sentiment words are ones only pre-training shows, so
the gap is the transfer. ``benchmarks/demo_transfer.py --preset t5-tiny`` measures the preset and
this budget over three seeds (BENCHMARKS.md "T5 demo": +37 to +48 at this budget; 1,000
pre-training steps were not enough on every seed, so pre-training is not shrunk).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from demo_runs import pretrained_vs_random

BUDGET = [
    'finetune.tasks=["SST-2"]',
    'evaluate.tasks=["SST-2"]',
    "finetune.train.max_steps=300",
]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_t5_demo_pretrained_beats_random_init_by_10_sst2_points(tmp_path: Path) -> None:
    run = pretrained_vs_random("t5-tiny", tmp_path, BUDGET)
    assert run.pretrain_summary["steps"] == run.cfg.pretrain.train.max_steps == 1500  # steps, not a timeout
    assert run.scores["pretrained"]["SST-2/invalid_outputs"] == 0, run.scores
    assert run.gap() >= 10, run.scores
