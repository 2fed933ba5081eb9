"""Data stages at 1, 2, ... Dask workers: per-stage seconds, the scaling ratio, the same bytes.

Called by ``benchmarks/data_bench.py --workers 1,2``. Each worker count runs the data flow of
the ``small`` preset (ingest -> dedup -> tokenizer -> pack on the Wikipedia slice) through
Prefect on a fresh ``distributed.LocalCluster`` of that many single-threaded worker
processes, into a fresh workdir, exactly as ``bertflow run --task-runner dask --workers N``
does. A stage's seconds are its ``build_seconds`` from the artifact manifest (the build
alone, not Prefect's bookkeeping around it); the flow's wall time includes cluster start.

Items are sized for parallelism here (``--group-mb`` of compressed input per ingest group,
``--shard-docs`` per shard). The output of every worker count is checked to be the same
bytes (packed rows, dedup's dropped list) as the first one's.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from flows.pipeline import data_pipeline
from tasks.run.config import load_config

STAGES = ("ingest", "dedup", "tokenizer", "pack")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def run_at(workers: int, paths: tuple[str, ...], workdir: Path, group_mb: int, shard_docs: int) -> dict:
    """One data flow at ``workers`` Dask workers: stage seconds, item counts, output digests."""
    overrides = [
        f"ingest.paths={json.dumps([str(Path(p).resolve()) for p in paths])}",
        f"ingest.group_bytes={group_mb * 2**20}",
        f"ingest.shard_docs={shard_docs}",
        'task_runner.kind="dask"',
        f"task_runner.workers={workers}",
    ]
    config = load_config("small", workdir, overrides)
    start = time.perf_counter()
    data = data_pipeline(config, str(workdir))
    wall = time.perf_counter() - start
    manifests = {s: json.loads(next((workdir / s).glob("*/manifest.json")).read_text()) for s in STAGES}
    dedup_dir = next((workdir / "dedup").glob("*/manifest.json")).parent
    return {
        "workers": workers,
        "flow_wall_seconds": wall,
        "stage_seconds": {s: m["build_seconds"] for s, m in manifests.items()},
        "items": {
            "ingest_groups": manifests["ingest"]["summary"]["groups"],
            "shards": manifests["ingest"]["summary"]["shards"],
            "lsh_bands": manifests["dedup"]["summary"]["bands"],
        },
        "docs": manifests["ingest"]["summary"]["docs"],
        "kept": manifests["dedup"]["summary"]["kept"],
        "digests": {
            "train.bin": sha256(data.packed.file("train.bin")),
            "validation.bin": sha256(data.packed.file("validation.bin")),
            "dropped.jsonl": sha256(dedup_dir / "dropped.jsonl"),
        },
    }


def scaling(workers: list[int], paths: tuple[str, ...], root: Path, group_mb: int, shard_docs: int) -> dict:
    """Every worker count in turn; ratios of each stage's seconds against the first count."""
    runs = [run_at(w, paths, root / f"workers-{w}", group_mb, shard_docs) for w in workers]
    base = runs[0]
    for run in runs:
        run["same_bytes_as_first"] = run["digests"] == base["digests"]
        run["speedup_vs_first"] = {
            s: base["stage_seconds"][s] / run["stage_seconds"][s] for s in run["stage_seconds"]
        }
        data_seconds = sum(run["stage_seconds"].values())
        run["speedup_vs_first"]["all_stages"] = sum(base["stage_seconds"].values()) / data_seconds
    return {"group_mb": group_mb, "shard_docs": shard_docs, "runs": runs}


def print_scaling(report: dict) -> None:
    runs = report["runs"]
    print(f"\n{'stage':<12}" + "".join(f"{'w=' + str(r['workers']) + ' s':>12}" for r in runs) + "   speedup")
    for stage in (*STAGES, "all_stages"):
        secs = [
            r["stage_seconds"][stage] if stage != "all_stages" else sum(r["stage_seconds"].values())
            for r in runs
        ]
        ratio = " ".join(f"{r['speedup_vs_first'][stage]:.2f}x" for r in runs[1:])
        print(f"{stage:<12}" + "".join(f"{s:12.1f}" for s in secs) + f"   {ratio}")
    print("same bytes at every worker count:", all(r["same_bytes_as_first"] for r in runs))
