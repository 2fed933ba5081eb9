"""glue_bench's recipe knobs and seed medians: ``--set FIELD=VALUE`` parses into the budget's own types
(or stops with the field named), and a multi-seed run reports per-metric medians with every seed kept,
which glue_table reads back seed by seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is scripts, not installed

from benchmarks.glue_bench import FULL, T5_BUDGET, budget_setting, over_seeds, packed_length, pretrain_config
from benchmarks.glue_table import collect


def report(glue_avg: float, sst2: float, stsb: float) -> dict:
    return {
        "per_task": {"SST-2": {"accuracy": sst2}, "STS-B": {"pearson": stsb, "spearmanr": stsb - 1}},
        "glue_avg": glue_avg,
        "glue_avg_name": "glue_avg[SST-2,STS-B]",
    }


def test_set_parses_each_field_as_its_own_type() -> None:
    assert budget_setting(FULL, "mask_rate=0.15") == ("mask_rate", 0.15)
    assert budget_setting(FULL, "seq_len=64") == ("seq_len", 64)
    assert budget_setting(FULL, "objective=electra") == ("objective", "electra")
    assert budget_setting(FULL, "group_by_length=true") == ("group_by_length", True)
    assert budget_setting(FULL, "selection_size=200") == ("selection_size", 200)  # None by default: an int
    assert budget_setting(FULL, "max_docs=none") == ("max_docs", None)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("mask_ratio=0.1", "expected FIELD=VALUE with FIELD one of"),
        ("mask_rate", "expected FIELD=VALUE"),
        ("seq_len=long", "'long' is not a int"),
        ("group_by_length=yes", "'yes' is not a bool"),
    ],
)
def test_set_refuses_unknown_fields_and_bad_values(item: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        budget_setting(FULL, item)


def test_t5_budget_pretrains_t5_by_span_corruption_on_rows_that_fill_the_encoder() -> None:
    from dataclasses import replace

    t5 = replace(FULL, **T5_BUDGET)
    cfg = pretrain_config(t5)
    assert (cfg.family, cfg.objective, cfg.noise_density) == ("t5", "span_corruption", 0.15)
    assert cfg.t5.size == "mini"
    assert cfg.train.lr_scaling == "rms" and cfg.train.max_minutes == FULL.pretrain_minutes
    assert packed_length(t5) == 141 and packed_length(FULL) == 128  # 141 tokens corrupt to 128 inputs
    bert = pretrain_config(FULL)
    assert (bert.family, bert.objective, bert.mask_rate, bert.shape.size) == ("bert", "mlm", 0.25, "mini")


def test_seeds_are_reported_as_medians_with_each_seed_kept(tmp_path: Path) -> None:
    per_seed = {"0": report(50.0, 80.0, 20.0), "1": report(40.0, 70.0, 30.0), "2": report(45.0, 90.0, 10.0)}
    for seed, r in per_seed.items():
        r["selection"] = report(60.0 + int(seed), 85.0, 25.0)
    out = over_seeds(per_seed)
    assert out["seeds"] == [0, 1, 2] and out["per_seed"] == per_seed
    assert out["glue_avg"] == 45.0
    assert out["per_task"] == {"SST-2": {"accuracy": 80.0}, "STS-B": {"pearson": 20.0, "spearmanr": 19.0}}
    assert out["selection"]["glue_avg"] == 61.0  # the median of the selection figures, apart from dev
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"pretrained": out}))
    assert collect([path])["pretrained"] == list(per_seed.values())  # glue_table sees three seeds, not one
