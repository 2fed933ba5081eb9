"""The ``bertflow`` command line.

Offline, quiet defaults are set before Prefect or MLflow is imported (they read their
settings at import time); a variable the user already set always wins. ``bertflow run``
keeps Prefect's home inside the working directory unless a Prefect API is configured, so
the working directory holds everything a run writes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

QUIET_OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,models,registry",
    "GIT_PYTHON_REFRESH": "quiet",
}


def set_default_env(workdir: Path | None) -> None:
    for key, value in QUIET_OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if workdir is not None and "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        home = workdir.resolve() / "prefect"
        home.mkdir(parents=True, exist_ok=True)  # Prefect's SQLite cannot create the directory
        os.environ["PREFECT_HOME"] = str(home)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline on a preset")
    run.add_argument("--preset", required=True, help="preset name (see `bertflow presets`) or a .toml path")
    run.add_argument("--workdir", required=True, type=Path, help="where everything the run writes goes")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a preset value, e.g. --set pretrain.max_steps=200 (repeatable)",
    )
    sub.add_parser("presets", help="list the presets")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline
    from tasks.config import load_config
    from tasks.pipeline_run import format_table

    config = load_config(args.preset, args.workdir, args.overrides)
    result = pipeline(config=config, workdir=str(args.workdir.resolve()))
    print("\nDev-set scores (0-100) after fine-tuning on the same budget:")
    print(format_table(result.scores))
    if result.registration:
        reg = result.registration
        alias = "champion" if reg["promoted"] else "challenger"
        print(f"\nRegistered {reg['model_name']} v{reg['version']} as {alias}: {reg['reason']}")
    print(f"\nMLflow: {result.tracking_uri} (parent run {result.parent_run_id})")
    print(f"  browse: mlflow ui --backend-store-uri {result.tracking_uri}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from tasks.config import preset_names

    print("\n".join(preset_names()))
    return 0


COMMANDS = {"run": cmd_run, "presets": cmd_presets}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_default_env(getattr(args, "workdir", None))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"bertflow: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
