"""Demo-data stage: the seeded synthetic corpus and tasks that let the demo run offline.

Unlike the other stages it writes to a fixed, human-readable directory (the preset
points ingest and fine-tuning at ``<workdir>/demo-data``), still atomically: files are
generated in a temporary sibling and renamed into place with a manifest recording the
config, so a changed config regenerates and an unchanged one is reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from tasks.demo.generate import generate_demo_data
from tasks.run.contract import StageContext, run_tracked
from tasks.store.artifact import MANIFEST, Artifact, fingerprint

log = logging.getLogger(__name__)

STAGE = "demo-data"
VERSION = "1"


class DemoConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    out_dir: str = Field(description="Directory the synthetic corpus and task files are written to.")
    seed: int = Field(0, ge=0, description="Seed of the synthetic language and data sets.")
    n_corpus_docs: int = Field(6000, ge=10, le=1_000_000, description="Documents in the synthetic corpus.")
    n_train: int = Field(400, ge=10, le=100_000, description="Labelled training examples per task.")
    n_dev: int = Field(200, ge=10, le=100_000, description="Labelled dev examples per task.")


def make_demo_data(cfg: DemoConfig, *, run_id: str | None = None) -> Artifact:
    """Generate the demo data into ``cfg.out_dir`` unless it already holds this config's data."""
    out = Path(cfg.out_dir)
    fp = fingerprint(STAGE, VERSION, cfg, [])
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("fingerprint") == fp:
        summary = json.loads(manifest.read_text())["summary"]
        return Artifact(stage=STAGE, fingerprint=fp, path=str(out), summary=summary, cached=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        paths = generate_demo_data(
            tmp, seed=cfg.seed, n_corpus_docs=cfg.n_corpus_docs, n_train=cfg.n_train, n_dev=cfg.n_dev
        )
        summary = {"corpus_files": sum(1 for p in Path(paths.corpus_dir).iterdir() if p.is_file())}
        record = {"stage": STAGE, "fingerprint": fp, "summary": summary, "producer_run_id": run_id}
        (tmp / MANIFEST).write_text(json.dumps(record, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("demo data written to %s", out)
    return Artifact(stage=STAGE, fingerprint=fp, path=str(out), summary=summary, producer_run_id=run_id)


@task(name="demo-data", cache_policy=NO_CACHE)
def demo_data_task(cfg: DemoConfig, ctx: StageContext) -> Artifact:
    return run_tracked(ctx, STAGE, cfg, [], lambda sink, run_id: make_demo_data(cfg, run_id=run_id))
