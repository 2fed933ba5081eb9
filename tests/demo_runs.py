"""A demo preset through its stage functions, fine-tuned from the pre-trained model and from random init.

What test_demo.py (BERT) and test_t5_demo.py (T5) share: the synthetic data, ingest, dedup,
tokenizer, pack and pre-training stages of the preset, then the same fine-tuning budget twice.
The Prefect flow and its MLflow record are tested on shrunken presets elsewhere (test_pipeline.py,
test_t5_pipeline.py); these tests are about whether pre-training transfers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.data.dedup import dedup
from tasks.data.ingest import ingest
from tasks.data.pack import pack
from tasks.data.tokenizer import train_tokenizer
from tasks.demo.stage import make_demo_data
from tasks.judge.evaluation import evaluate_checkpoint
from tasks.run.config import PipelineConfig, load_config
from tasks.store.artifact import Artifact
from tasks.train.finetune import finetune
from tasks.train.pretrain import pretrain


@dataclass(frozen=True)
class DemoRun:
    cfg: PipelineConfig
    pretrain_summary: dict[str, Any]
    scores: dict[str, dict[str, Any]]  # "pretrained" / "random" -> evaluation summary

    def gap(self, metric: str = "SST-2/accuracy") -> float:
        return self.scores["pretrained"][metric] - self.scores["random"][metric]


def demo_documents(cfg: PipelineConfig, workdir: Path) -> tuple[Artifact, Artifact]:
    """The preset's synthetic data (with its lexicon.json) and the deduplicated corpus built from it."""
    demo = make_demo_data(cfg.demo, workdir=workdir)
    return demo, dedup(cfg.dedup, ingest(cfg.ingest, workdir=workdir), workdir=workdir)


def pretrained_vs_random(preset: str, workdir: Path, overrides: Sequence[str] = ()) -> DemoRun:
    cfg = load_config(preset, workdir, list(overrides))
    _, docs = demo_documents(cfg, workdir)
    tokenizer = train_tokenizer(cfg.tokenizer, docs, workdir=workdir)
    packed = pack(cfg.pack, docs, tokenizer, workdir=workdir)
    checkpoint = pretrain(cfg.pretrain, packed, tokenizer, workdir=workdir)
    scores = {}
    for init in ("pretrained", "random"):
        tuned = finetune(cfg.finetune.model_copy(update={"init": init}), checkpoint, workdir=workdir)
        scores[init] = evaluate_checkpoint(cfg.evaluate, tuned, workdir=workdir).summary
    return DemoRun(cfg, checkpoint.summary, scores)
