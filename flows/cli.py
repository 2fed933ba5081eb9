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

from tasks.run import offline  # imports nothing heavy: the settings must precede Prefect and MLflow


def set_default_env(workdir: Path | None) -> None:
    offline.apply()
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
        help="override a preset value, e.g. --set pretrain.train.max_steps=200 (repeatable)",
    )
    run.add_argument(
        "--task-runner",
        default=None,
        metavar="local|dask|dask://HOST:PORT",
        help="where ingest/dedup/pack shards run: threads here (default), a Dask LocalCluster, or a cluster",
    )
    run.add_argument(
        "--workers", type=int, help="threads, or LocalCluster worker processes (default: the cores)"
    )
    add_sweep_parser(sub)
    sub.add_parser("presets", help="list the presets")
    add_server_parser(sub)
    add_compare_parser(sub)
    add_promote_parser(sub)
    add_export_parser(sub)
    add_evaluate_parser(sub)
    add_status_parser(sub)
    return parser


def add_status_parser(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="stages of the last run in a workdir, and the registered versions")
    status.add_argument("--workdir", required=True, type=Path, help="the workdir of `bertflow run`")


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="run a family of configurations (Optuna) and gate the best")
    sweep.add_argument("--preset", required=True, help="preset name or .toml path the trials start from")
    sweep.add_argument("--space", required=True, help="search-space TOML, or a name in deployments/spaces")
    sweep.add_argument("--trials", required=True, type=int, help="trials to finish (COMPLETE or PRUNED)")
    sweep.add_argument("--workdir", required=True, type=Path, help="where trials write and share stages")
    sweep.add_argument("--parallel", type=int, default=1, help="trials at once (default 1)")
    sweep.add_argument("--storage", help="Optuna storage URL (default: SQLite in <workdir>/sweep/)")
    sweep.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override a preset value for every trial (repeatable)",
    )  # fmt: skip


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint or registered model on dev sets")
    evaluate.add_argument(
        "model_uri", help="checkpoint dir, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/PATH"
    )
    evaluate.add_argument("--data-dir", required=True, help="holds glue/<TASK>/dev*.tsv and squad/dev.json")
    evaluate.add_argument("--tasks", nargs="+", required=True, help="task names, e.g. SST-2 MRPC STS-B SQuAD")
    evaluate.add_argument("--workdir", type=Path, required=True, help="where the report is written")
    evaluate.add_argument(
        "--tracking-uri", help="MLflow URI for models:/ and runs:/ (default: workdir's SQLite)"
    )
    evaluate.add_argument("--max-seq-len", type=int, default=128)


def add_server_parser(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser("server", help="start / stop / inspect local Prefect + MLflow servers")
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument(
        "--state-dir", type=Path, default=Path(".bertflow-servers"), help="pid files, logs, DBs"
    )
    server.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    server.add_argument("--prefect-port", type=int, default=4200)
    server.add_argument("--mlflow-port", type=int, default=5000)
    server.add_argument(
        "--mlflow-backend-uri", help="e.g. postgresql://127.0.0.1:5432/mlflow (default SQLite)"
    )
    server.add_argument("--prefect-database-url", help="e.g. postgresql+asyncpg://127.0.0.1:5432/prefect")
    server.add_argument("--only", choices=["prefect", "mlflow"], help="act on one server only")


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser("compare", help="table + plots of pipeline runs or registered model versions")
    compare.add_argument(
        "--tracking-uri", required=True, help="MLflow tracking URI (server or sqlite:///...)"
    )
    pick = compare.add_mutually_exclusive_group()
    pick.add_argument("--runs", nargs="+", metavar="RUN_ID", help="pipeline (or stage) run ids")
    pick.add_argument("--model", help="registered model NAME (all versions) or NAME@ALIAS")
    compare.add_argument(
        "--experiment", default="bertflow", help="otherwise: the latest runs of this experiment"
    )
    compare.add_argument("--limit", type=int, default=10, help="how many latest runs (default 10)")
    compare.add_argument(
        "--out", type=Path, default=Path("comparison"), help="where table + PNGs are written"
    )
    compare.add_argument("--no-log", action="store_true", help="do not log the comparison to MLflow")


def add_promote_parser(sub: argparse._SubParsersAction) -> None:
    promote = sub.add_parser("promote", help="move the champion alias to a model version, with a reason")
    promote.add_argument("--tracking-uri", required=True, help="MLflow tracking URI")
    promote.add_argument("--model", required=True, help="registered model name")
    promote.add_argument("--version", required=True, help="model version to make champion")
    promote.add_argument("--reason", required=True, help="why (recorded on the version)")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a model as a Hugging Face transformers directory")
    export.add_argument(
        "source", help="checkpoint dir, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/PATH"
    )
    export.add_argument("--out", type=Path, required=True, help="output directory")
    export.add_argument("--tracking-uri", help="MLflow tracking URI (needed for models:/ and runs:/)")


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline
    from tasks.judge.register import closing_lines
    from tasks.progress import logs_above_bars
    from tasks.run.config import load_config, parse_task_runner
    from tasks.run.pipeline_run import check_tracking, format_table

    updates = {}
    if args.task_runner is not None or args.workers is not None:
        runner = parse_task_runner(args.task_runner or "local", args.workers)
        updates["task_runner"] = runner.model_dump()
    config = load_config(args.preset, args.workdir, args.overrides, updates)
    check_tracking(config, args.workdir)  # before Prefect starts: an unreachable server fails in seconds
    with logs_above_bars():
        result = pipeline(config=config, workdir=str(args.workdir.resolve()))
    print("\nDev-set scores (0-100) after fine-tuning on the same budget:")
    print(format_table(result.scores))
    if result.registration:
        print("\n" + "\n".join(closing_lines(result.registration, result.tracking_uri)))
    print(f"\nMLflow: {result.tracking_uri} (parent run {result.parent_run_id})")
    print(f"  browse: mlflow ui --backend-store-uri {result.tracking_uri}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from flows.sweep import sweep_with_runner
    from tasks.judge.register import closing_lines
    from tasks.progress import logs_above_bars
    from tasks.run.pipeline_run import format_table

    if args.trials < 1 or args.parallel < 1:
        raise ValueError("--trials and --parallel must be at least 1")
    with logs_above_bars():
        result = sweep_with_runner(args.parallel)(
            preset=args.preset, space_file=args.space, trials=args.trials,
            workdir=str(args.workdir.resolve()), parallel=args.parallel, storage=args.storage,
            overrides=args.overrides,
        )  # fmt: skip
    pruned = f" ({len(result.pruned_trials)} more pruned)" if result.pruned_trials else ""
    print(f"\nSweep {result.study_name}: {result.trials} trials{pruned}, ranked on selection {result.metric}")
    print(result.table_markdown)
    print(f"\nBest trial {result.best_trial}: {result.best_params} (selection {result.metric} "
          f"{result.best_selection_value:.2f}); its dev-set scores, scored once:")  # fmt: skip
    print(format_table(result.dev_scores))
    if result.registration:
        print("\n" + "\n".join(closing_lines(result.registration, result.tracking_uri)))
    print(f"\nMLflow: {result.tracking_uri} (sweep run {result.parent_run_id}); Optuna: {result.storage}")
    print("files: " + ", ".join(result.files))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from tasks.run.config import preset_names

    print("\n".join(preset_names()))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from tasks.commands.servers import SERVERS, ServerConfig, start, status, stop

    which = (args.only,) if args.only else SERVERS
    if args.action == "stop":
        for name, was_running in stop(args.state_dir, which).items():
            print(f"{name}: {'stopped' if was_running else 'not running'}")
        return 0
    if args.action == "start":
        cfg = ServerConfig(
            state_dir=str(args.state_dir), host=args.host, prefect_port=args.prefect_port,
            mlflow_port=args.mlflow_port, mlflow_backend_uri=args.mlflow_backend_uri,
            prefect_database_url=args.prefect_database_url,
        )  # fmt: skip
        urls = start(cfg, which)
        print("\n".join(f"{name}: {url}" for name, url in urls.items()))
        if "prefect" in urls:
            print(f"\nexport PREFECT_API_URL={cfg.prefect_api_url}")
        if "mlflow" in urls:
            print(f"export MLFLOW_TRACKING_URI={urls['mlflow']}   # or --set tracking.tracking_uri=...")
        return 0
    report = status(args.state_dir)
    for name, info in report.items():
        state = "healthy" if info["healthy"] else ("running, not answering" if info["pid"] else "stopped")
        print(f"{name}: {state} pid={info['pid']} url={info['url']}")
    return 0 if all(report[n]["healthy"] for n in which) else 3


def cmd_compare(args: argparse.Namespace) -> int:
    from tasks.commands.compare import compare, terminal_table

    result = compare(
        args.tracking_uri, args.out, run_ids=args.runs, model=args.model, experiment=args.experiment,
        limit=args.limit, log_to_mlflow=not args.no_log,
    )  # fmt: skip
    print(terminal_table(result.table))
    print(f"\nmarkdown: {args.out / 'comparison.md'}")
    print("plots: " + ", ".join(str(p) for p in result.plots))
    if result.compare_run_id:
        print(f"logged to MLflow run {result.compare_run_id}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from tasks.commands.promote import promote_version

    previous = promote_version(args.tracking_uri, args.model, args.version, args.reason)
    print(f"{args.model} v{args.version} is now champion (was {previous or 'none'}): {args.reason}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tasks.commands.export import export_model

    for path in export_model(args.source, args.out, args.tracking_uri):
        print(path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tasks.judge.by_uri import evaluate_model_uri
    from tasks.judge.evaluation import EvalConfig

    cfg = EvalConfig(data_dir=args.data_dir, tasks=tuple(args.tasks), max_seq_len=args.max_seq_len)
    report = evaluate_model_uri(args.model_uri, cfg, args.workdir, tracking_uri=args.tracking_uri)
    for task, metrics in report["per_task"].items():
        print(f"{task:<10} " + "  ".join(f"{name} {value:.2f}" for name, value in metrics.items()))
    if "glue_avg" in report:
        print(f"{report['glue_avg_name']}: {report['glue_avg']:.2f}")
    print(f"report: {report['report_dir']}/report.json")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tasks.commands.status import status_lines, workdir_status

    print("\n".join(status_lines(workdir_status(args.workdir))))
    return 0


COMMANDS = {
    "evaluate": cmd_evaluate,
    "run": cmd_run,
    "sweep": cmd_sweep,
    "presets": cmd_presets,
    "server": cmd_server,
    "compare": cmd_compare,
    "promote": cmd_promote,
    "export": cmd_export,
    "status": cmd_status,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reads_only = args.command == "status"  # must not create a Prefect home in a workdir it only reads
    set_default_env(None if reads_only else getattr(args, "workdir", None))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    if args.command in ("run", "sweep"):
        from tasks.run.shard_tasks import quiet_shard_logs

        quiet_shard_logs()
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError, RuntimeError, ArithmeticError) as exc:
        print(f"bertflow: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
