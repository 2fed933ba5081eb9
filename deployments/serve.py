"""Serve bertflow's deployments from this process (no work pool needed).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve --workdir-root /srv/bertflow

registers, for every chosen preset, ``bertflow-pipeline/<preset>``, ``bertflow-data/<preset>``,
``bertflow-pretrain/<preset>`` and ``bertflow-sweep/<preset>`` with the preset as default parameters (plus
``bertflow-compare/latest``), and runs their
flow runs in subprocesses of this one until it is stopped. Schedules (``--schedules``):
the full pipeline nightly (its data and pre-training stages are reused from the workdir
unless the corpus changed, so nightly it fine-tunes, evaluates and gates on the current
downstream data) and pre-training weekly. Every deployment that pre-trains has a
concurrency limit of 1, so two pre-training runs never share a machine's GPU.
``prefect.yaml`` declares the same deployments for work pools (process, docker,
kubernetes) instead.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment

from flows.deployed import (
    compare_deployment,
    data_deployment,
    pipeline_deployment,
    pretrain_deployment,
    sweep_deployment,
)

NIGHTLY = "0 2 * * *"  # 02:00 every day
WEEKLY = "0 3 * * 6"  # 03:00 every Saturday
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def build_deployments(presets: list[str], workdir_root: Path, schedules: bool) -> list[RunnerDeployment]:
    """Three deployments per preset, parameters defaulting to the preset and its own workdir."""
    deployments = []
    for preset in presets:
        params = {"params": {"preset": preset, "workdir": str(workdir_root.resolve() / preset)}}
        tags = ["bertflow", preset]
        deployments += [
            pipeline_deployment.to_deployment(
                name=preset, parameters=params, tags=tags, cron=NIGHTLY if schedules else None,
                concurrency_limit=ONE_AT_A_TIME, description="Whole pipeline on this preset.",
            ),
            pretrain_deployment.to_deployment(
                name=preset, parameters=params, tags=[*tags, "gpu"], cron=WEEKLY if schedules else None,
                concurrency_limit=ONE_AT_A_TIME, description="Data + pre-training (GPU queue).",
            ),
            data_deployment.to_deployment(
                name=preset, parameters=params, tags=tags, description="Data phase: ingest to packed corpus",
            ),
            sweep_deployment.to_deployment(
                name=preset, parameters=params, tags=[*tags, "sweep"], concurrency_limit=ONE_AT_A_TIME,
                description="Sweep: a search space's trials on this preset, ranked on held-out train data.",
            ),
        ]  # fmt: skip
    compare_params = {
        "out_dir": str(workdir_root.resolve() / "comparison"),
        "tracking_uri": "http://127.0.0.1:5000",
    }
    deployments.append(
        compare_deployment.to_deployment(
            name="latest",
            parameters=compare_params,
            tags=["bertflow"],
            description="Table + plots of the latest pipeline runs (or a model's versions).",
        )
    )
    return deployments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"], help="presets to deploy")
    parser.add_argument("--workdir-root", type=Path, default=Path("runs"), help="<root>/<preset> workdirs")
    parser.add_argument("--schedules", action="store_true", help="attach the nightly / weekly cron schedules")
    parser.add_argument("--limit", type=int, default=1, help="flow runs this process executes at once")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,models,registry")
    serve(*build_deployments(args.presets, args.workdir_root, args.schedules), limit=args.limit)


if __name__ == "__main__":
    main()
