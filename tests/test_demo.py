"""The demo preset end to end, as `make demo` runs it: pre-training must transfer.

The synthetic language is built so that only pre-training can teach what the dev sets'
held-out sentiment words mean (the fine-tuning train sets never show them), so the demo's
promise is a gap, not a score: the model fine-tuned from the pre-trained encoder must beat the
same fine-tuning budget from random initialisation by at least 15 SST-2 points. The preset
budgets pre-training in steps, so the result does not depend on the machine's speed or load.
``benchmarks/demo_transfer.py`` measures the same gap over five seeds (BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.pipeline import pipeline
from tasks.run.config import load_config

pytestmark = pytest.mark.slow


def test_demo_pretrained_beats_random_init_by_15_sst2_points(tmp_path: Path) -> None:
    cfg = load_config("tiny", tmp_path, ["registry.model_name=demo-test"])
    result = pipeline(config=cfg, workdir=str(tmp_path))
    rows = {row["metric"]: row for row in result.scores}
    sst2 = rows["SST-2/accuracy"]
    assert sst2["pretrained"] >= sst2["random_init"] + 15, sst2
    glue = rows["glue_avg"]
    assert glue["pretrained"] > glue["random_init"], glue
    assert result.registration is not None
    summary = result.registration.summary
    assert summary["promoted"] and summary["reason"].startswith("first champion"), summary
