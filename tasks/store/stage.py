"""The stage contract: a stage is a config type plus a pure build function; this module does the rest.

``Stage`` is the declaration every pipeline stage makes once (name, build function, the
external files it reads, where it writes). Calling it runs the stage idempotently:

1. **Fingerprint** everything the output depends on, in one place for every stage: the
   stage's code (``digest.code_digest`` of the build function's module and its imports),
   its config, the upstream artifacts' fingerprints and contents (their manifests' file
   tables: an upstream rebuilt with other bytes invalidates what was built on it), the
   content of every external file it reads (``reads``), and its destination outside the
   workdir (e.g. the registry URI).
2. **Reuse** ``<workdir>/<stage>/<fingerprint>/`` only if its manifest verifies file by
   file (``manifest.verify``); a damaged one is logged naming the file and rebuilt.
3. **Build** otherwise, into an owned temporary sibling, under a per-fingerprint lock;
   the manifest (sizes + sha256) is written last and the directory renamed into place, so
   a crash never leaves a finished-looking artifact.

Nothing here imports Prefect or MLflow: the Prefect task and the MLflow run around a stage
come from ``tasks.run.contract``, and tests or benchmarks call stages directly.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.sink import MetricSink, NullSink
from tasks.store.artifact import Artifact
from tasks.store.digest import code_digest, files_digest, json_digest
from tasks.store.locks import build_lock
from tasks.store.manifest import content_digest, read_manifest, verify, write_manifest
from tasks.store.ownership import check_replaceable, mark_owned, remove_owned
from tasks.store.shard_map import ItemFn, ShardMap, ShardWork, inline_map, item_directory

log = logging.getLogger(__name__)

SCRATCH_DIR = ".scratch"


@dataclass(frozen=True)
class Job:
    """What a build function gets besides its config and inputs."""

    sink: MetricSink
    fingerprint: str
    workdir: Path
    scratch: Path  # survives a kill (resumable training state); deleted once the stage finished
    run_id: str | None = None  # the MLflow run tracking this build, when there is one
    destination: str | None = None  # where the stage writes outside the workdir (registry URI)
    shard_map: ShardMap = inline_map  # who runs a step's items (tasks.store.shard_map)

    def map(self, step: str, fn: ItemFn, items: Sequence[Any], first_index: int = 0) -> list[Any]:
        """``fn(item, out_dir)`` for every item, cached per item in this build's scratch; results in order.

        Items are numbered from ``first_index`` (a step mapped in several calls).
        """
        work = [
            ShardWork(fn, item, item_directory(self.scratch, step, first_index + i))
            for i, item in enumerate(items)
        ]
        return self.shard_map(step, work, self.sink.progress)

    def item_dir(self, step: str, index: int) -> Path:
        """Where item ``index`` of ``step`` left its files."""
        return item_directory(self.scratch, step, index)


Build = Callable[..., Mapping[str, Any]]  # build(cfg, *inputs, out=Path, job=Job) -> JSON-able summary
Reads = Callable[[Any, Path], Sequence[Path]]  # (cfg, workdir) -> external files the stage reads
Location = Callable[[Any, Path, str], Path]  # (cfg, workdir, fingerprint) -> the artifact directory


def no_reads(cfg: Any, workdir: Path) -> Sequence[Path]:
    return ()


@dataclass(frozen=True)
class Stage:
    """One pipeline stage's declaration. ``stage(cfg, *inputs, workdir=...)`` returns its artifact."""

    name: str
    build: Build
    reads: Reads = no_reads
    sampled_reads: bool = False  # corpora: hash sampled blocks of big files (see digest)
    location: Location | None = None  # default: <workdir>/<name>/<fingerprint>
    needs_destination: bool = False
    log_files: tuple[str, ...] = field(default=())  # files logged to the stage's MLflow run when built
    retry_on_io: bool = False  # Prefect retries transient I/O errors of this stage

    def key(
        self, cfg: BaseModel, inputs: Sequence[Artifact], workdir: Path, destination: str | None = None
    ) -> dict[str, Any]:
        """Everything the output depends on; its digest is the fingerprint."""
        return {
            "stage": self.name,
            "code": code_digest(self.build.__module__),
            "config": cfg.model_dump(mode="json"),
            "inputs": [a.fingerprint for a in inputs],
            "input_contents": [content_digest(a.dir) for a in inputs],  # what they hold, byte for byte
            "reads": files_digest(self.reads(cfg, workdir), sampled=self.sampled_reads),
            "destination": destination,
        }

    def directory(self, cfg: BaseModel, workdir: Path, fp: str) -> Path:
        return self.location(cfg, workdir, fp) if self.location else workdir / self.name / fp

    def __call__(
        self,
        cfg: BaseModel,
        *inputs: Artifact,
        workdir: Path | str,
        sink: MetricSink | None = None,
        run_id: str | None = None,
        destination: str | None = None,
        shard_map: ShardMap = inline_map,
    ) -> Artifact:
        if self.needs_destination and not destination:
            raise ValueError(f"stage {self.name} writes outside the workdir: it needs a destination")
        workdir = Path(workdir).resolve()
        key = self.key(cfg, inputs, workdir, destination)
        fp = json_digest(key)
        final = self.directory(cfg, workdir, fp)
        scratch = workdir / SCRATCH_DIR / f"{self.name}-{fp}"
        with build_lock(workdir, self.name, fp):
            found = reusable(self.name, final, fp)
            if found is not None:
                return found
            for stale in final.parent.glob(f".tmp-{final.name}-*"):  # a killed build's; the lock says no one
                remove_owned(stale)  # else is building this fingerprint now
            job = Job(sink or NullSink(), fp, workdir, scratch, run_id, destination, shard_map)
            artifact = self._build(cfg, inputs, final, key, job)
        shutil.rmtree(scratch, ignore_errors=True)  # ours: made for this fingerprint only
        return artifact

    def _build(
        self, cfg: BaseModel, inputs: Sequence[Artifact], final: Path, key: dict[str, Any], job: Job
    ) -> Artifact:
        """Build into an owned temporary sibling, write the manifest, rename into place."""
        check_replaceable(final)  # a foreign directory in the way: refuse before doing any work
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        mark_owned(tmp, self.name)
        started = time.perf_counter()
        try:
            summary = dict(self.build(cfg, *inputs, out=tmp, job=job))
            record = {
                "build_seconds": round(time.perf_counter() - started, 3),
                "stage": self.name,
                "fingerprint": job.fingerprint,
                "key": key,
                "inputs": key["inputs"],
                "summary": summary,
                "producer_run_id": job.run_id,
                "created_unix": time.time(),
            }
            write_manifest(tmp, record)
            remove_owned(final)  # a damaged or superseded artifact of ours; a foreign dir is refused
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Artifact(
            stage=self.name,
            fingerprint=job.fingerprint,
            path=str(final),
            inputs=tuple(key["inputs"]),
            summary=summary,
            producer_run_id=job.run_id,
        )


def reusable(stage: str, directory: Path, fp: str) -> Artifact | None:
    """The finished artifact at ``directory`` if it is this fingerprint's and intact, else None."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("fingerprint") != fp:
        return None
    problems = verify(directory, manifest)
    if problems:
        log.warning("%s: %s is damaged, rebuilding it: %s", stage, directory, "; ".join(problems))
        return None
    log.info("%s: reusing finished artifact %s", stage, directory)
    return Artifact(
        stage=manifest["stage"],
        fingerprint=fp,
        path=str(directory),
        inputs=tuple(manifest.get("inputs", ())),
        summary=manifest.get("summary", {}),
        producer_run_id=manifest.get("producer_run_id"),
        cached=True,
    )
