"""Artifact handles and idempotent, atomic stage directories.

Stages exchange small frozen handles (directory + fingerprint + manifest), never tensors
or datasets. A stage writes into ``<workdir>/<stage>/<fingerprint>/``; the fingerprint
hashes the stage's code version, its config and its inputs' fingerprints, so a re-run
with the same inputs finds the finished directory and returns at once. Output is built
in a temporary sibling directory and renamed into place only after the manifest is
written: a crashed stage leaves no manifest and therefore no "finished" artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class Artifact(BaseModel):
    """A finished stage output: where it is, what identifies it, what it holds."""

    model_config = ConfigDict(frozen=True)

    stage: str
    fingerprint: str
    path: str
    inputs: tuple[str, ...] = ()
    summary: dict[str, Any] = {}
    producer_run_id: str | None = None
    cached: bool = False

    @property
    def dir(self) -> Path:
        return Path(self.path)

    def file(self, name: str) -> Path:
        """Path of a file inside the artifact directory."""
        return Path(self.path) / name


def fingerprint(
    stage: str,
    version: str,
    config: BaseModel | Mapping[str, Any],
    inputs: Sequence[Artifact],
    source_key: str = "",
) -> str:
    """Content address of a stage output: code version + config + upstream fingerprints.

    ``source_key`` identifies inputs that are not artifacts (e.g. the sizes and mtimes of
    the raw corpus files ingest reads), so editing a source file invalidates the stage.
    """
    cfg = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    payload = json.dumps(
        {
            "stage": stage,
            "version": version,
            "config": cfg,
            "inputs": [a.fingerprint for a in inputs],
            "source": source_key,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_artifact(path: Path) -> Artifact:
    """Read a finished artifact from its directory (raises if it has no manifest)."""
    data = json.loads((path / MANIFEST).read_text())
    return Artifact(
        stage=data["stage"],
        fingerprint=data["fingerprint"],
        path=str(path),
        inputs=tuple(data.get("inputs", ())),
        summary=data.get("summary", {}),
        producer_run_id=data.get("producer_run_id"),
        cached=True,
    )


def find_artifact(workdir: Path, stage: str, fp: str) -> Artifact | None:
    """The finished artifact for (stage, fingerprint), or None when it was never completed."""
    final = workdir / stage / fp
    return load_artifact(final) if (final / MANIFEST).is_file() else None


def build_stage(
    *,
    workdir: Path,
    stage: str,
    version: str,
    config: BaseModel,
    inputs: Sequence[Artifact],
    build: Callable[[Path], Mapping[str, Any]],
    run_id: str | None = None,
    source_key: str = "",
) -> Artifact:
    """Return the finished artifact for this stage, building it atomically if needed.

    ``build(tmp_dir)`` writes the stage's files into ``tmp_dir`` and returns a small
    JSON-able summary (counts, scores) that goes into the manifest. On any exception
    the temporary directory is removed and the exception propagates.
    """
    fp = fingerprint(stage, version, config, inputs, source_key)
    done = find_artifact(workdir, stage, fp)
    if done is not None:
        log.info("%s: reusing finished artifact %s", stage, done.path)
        return done
    final = workdir / stage / fp
    tmp = workdir / stage / f".tmp-{fp}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        summary = dict(build(tmp))
        manifest = {
            "stage": stage,
            "fingerprint": fp,
            "version": version,
            "inputs": [a.fingerprint for a in inputs],
            "config": config.model_dump(mode="json"),
            "summary": summary,
            "producer_run_id": run_id,
            "created_unix": time.time(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if final.exists():  # an earlier crash left a directory without a manifest
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(
        stage=stage,
        fingerprint=fp,
        path=str(final),
        inputs=tuple(a.fingerprint for a in inputs),
        summary=summary,
        producer_run_id=run_id,
    )
