"""Demo-data stage: the seeded synthetic corpus and tasks that let the demo run offline.

Unlike the other stages it writes to a fixed, human-readable directory (the preset points
ingest and fine-tuning at ``<workdir>/demo-data``), through the same stage contract: built
in a temporary sibling, renamed into place with a verified manifest. A changed config
replaces the directory only if bertflow created it (``tasks.store.ownership``); an
existing folder of someone else's is refused, never wiped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks.demo.generate import generate_demo_data
from tasks.store.stage import Job, Stage

log = logging.getLogger(__name__)


class DemoConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    out_dir: str = Field(description="Directory the synthetic corpus and task files are written to.")
    seed: int = Field(0, ge=0, description="Seed of the synthetic language and data sets.")
    n_corpus_docs: int = Field(6000, ge=10, le=1_000_000, description="Documents in the synthetic corpus.")
    n_train: int = Field(400, ge=10, le=100_000, description="Labelled training examples per task.")
    n_dev: int = Field(200, ge=10, le=100_000, description="Labelled dev examples per task.")


def build_demo_data(cfg: DemoConfig, *, out: Path, job: Job) -> dict:
    """Generate the corpus and task files into ``out``."""
    paths = generate_demo_data(
        out, seed=cfg.seed, n_corpus_docs=cfg.n_corpus_docs, n_train=cfg.n_train, n_dev=cfg.n_dev
    )
    log.info("demo data generated for %s", cfg.out_dir)
    return {"corpus_files": sum(1 for p in Path(paths.corpus_dir).iterdir() if p.is_file())}


def out_dir(cfg: DemoConfig, workdir: Path, fp: str) -> Path:
    return Path(cfg.out_dir).resolve()


make_demo_data = Stage("demo-data", build_demo_data, location=out_dir)
