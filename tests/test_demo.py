"""The demo preset end to end, as `make demo` runs it: pre-training must transfer.

The synthetic language is built so that only pre-training can teach what the dev sets'
held-out sentiment words mean (the fine-tuning train sets never show them), so the demo's
promise is a gap, not a score: the model fine-tuned from the pre-trained encoder must beat the
same fine-tuning budget from random initialisation by at least 15 SST-2 points. The preset
budgets pre-training in steps, so the result does not depend on the machine's speed or load.

Every stage of the preset runs, with the preset's seeds, through the stage functions the
pipeline's tasks wrap (the Prefect flow and its MLflow record are tested on a shrunken preset in
test_pipeline.py; running them here too would add ~45 s to the suite for no other check).
``benchmarks/demo_transfer.py`` measures the same gap over five seeds (BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.data.dedup import dedup
from tasks.data.ingest import ingest
from tasks.data.pack import pack
from tasks.data.tokenizer import train_tokenizer
from tasks.demo.stage import make_demo_data
from tasks.judge.evaluation import evaluate_checkpoint
from tasks.run.config import load_config
from tasks.train.finetune import finetune
from tasks.train.pretrain import pretrain

# On one worker thread of a slow 2-core VM this test took 508 s (BENCHMARKS.md "Test suite"): the
# suite-wide 600 s limit would leave it too little room.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_demo_pretrained_beats_random_init_by_15_sst2_points(tmp_path: Path) -> None:
    cfg = load_config("tiny", tmp_path)
    make_demo_data(cfg.demo, workdir=tmp_path)
    docs = dedup(cfg.dedup, ingest(cfg.ingest, workdir=tmp_path), workdir=tmp_path)
    tokenizer = train_tokenizer(cfg.tokenizer, docs, workdir=tmp_path)
    checkpoint = pretrain(cfg.pretrain, pack(cfg.pack, docs, tokenizer, workdir=tmp_path), tokenizer,
                          workdir=tmp_path)  # fmt: skip
    assert checkpoint.summary["steps"] == cfg.pretrain.train.max_steps  # the step budget, not a timeout
    scores = {}
    for init in ("pretrained", "random"):
        tuned = finetune(cfg.finetune.model_copy(update={"init": init}), checkpoint, workdir=tmp_path)
        scores[init] = evaluate_checkpoint(cfg.evaluate, tuned, workdir=tmp_path).summary
    gap = scores["pretrained"]["SST-2/accuracy"] - scores["random"]["SST-2/accuracy"]
    assert gap >= 15, scores
    assert scores["pretrained"]["glue_avg"] > scores["random"]["glue_avg"], scores  # the gate would promote
