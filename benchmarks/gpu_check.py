"""GPU check: one prepared script that exercises bertflow's CUDA path on a lent H100/H200 in under 9 minutes.

    python3 benchmarks/gpu_check.py --data .gpu/data --out $OUT/gpu.json        # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out gpu-dry.json                 # CPU, tiny, < 2 min

Three steps, in order; the JSON is rewritten (temp file + rename) after every check, so a run cut
short still leaves everything it finished:

1. ``correctness`` (benchmarks/gpu_correctness.py): bf16 autocast vs fp32 loss; SDPA flash and
   memory-efficient kernels vs the math kernel; FlexAttention document mask vs SDPA with the
   explicit block-diagonal mask; fit() compiled vs eager over 20 steps; exact resume (30 steps
   straight vs 15 + checkpoint + a fresh process resuming for 15); fused AdamW; one-rank NCCL DDP.
2. ``throughput`` (benchmarks/gpu_throughput.py): ``base`` shape, seq 128, bf16, vocab 30,522 and
   8,192: bertflow eager / compiled vs transformers' BertForMaskedLM (sdpa) eager / compiled;
   tokens/s and MFU against the device's row of tasks.engine.flops.GPU_PEAKS.
3. ``quality`` (benchmarks/gpu_quality.py): the data stages on the carried Wikipedia files (in a
   separate process, overlapping steps 1-2), 4 minutes of ``base`` pre-training, multi-task
   fine-tuning + dev scoring on CoLA, SST-2, MRPC, STS-B, RTE from the pre-trained and from a
   random init (1 seed), and glue_avg.

Time: ``TOTAL_BUDGET_S`` (540 s) from the script's start, the wheel bootstrap included, split into
``STEP_BUDGET_S``; a check that would not fit what is left of its step's budget is skipped and
says so (``passed: null``, ``reason``), and pre-training shrinks below 4 minutes if the earlier
steps overran, so the run ends inside the budget. Every check's entry holds ``passed`` (true /
false / null) and ``reason`` (why it did not run, or what ran instead on CPU).

The device machine has no Prefect, MLflow, pydantic, evaluate or datasets and reaches no registry:
``make gpu-data`` puts the missing packages' cp312 wheels in ``.gpu/wheels``, and the bootstrap
below installs the ones this Python lacks into ``--site`` before anything imports them (appended
to ``sys.path`` and exported in ``PYTHONPATH`` for the worker processes). Nothing on the import
path touches Prefect or MLflow: only models/, tasks.engine and the pure stage functions.

``--dry-run`` hides any GPU (CUDA_VISIBLE_DEVICES=""), makes its own tiny corpus and GLUE files
unless ``--data`` is given, and runs every step with toy shapes; tests/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCHEMA = "bertflow.gpu_check/1"
TOTAL_BUDGET_S = 540.0  # 9 minutes of wall time on the GPU machine, from the script's start
STEP_BUDGET_S = {"correctness": 90.0, "throughput": 85.0, "quality": 350.0}  # + ~15 s bootstrap
DRY_TOTAL_BUDGET_S = 1800.0  # the dry run skips nothing for time; the test's timeout bounds it
STEPS = tuple(STEP_BUDGET_S)
DEFAULT_WHEELS = REPO / ".gpu" / "wheels"
DEFAULT_SITE = Path("/tmp/bertflow-gpu/site-packages")  # dill pickles modules outside site-packages by value
# Offline and quiet (as tasks/run/offline.py, which this script must not import: it is the run layer).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
REPORTED_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "pyarrow",
    "pydantic",
    "evaluate",
    "datasets",
    "safetensors",
    "scikit-learn",
    "scipy",
)

# Every key the finished JSON holds (a step that fails early gets the rest filled with null + reason).
EXPECTED = {
    "correctness": {
        "checks": (
            "bf16_vs_fp32",
            "sdpa_flash_vs_math",
            "sdpa_efficient_vs_math",
            "fused_adamw",
            "exact_resume",
            "flex_document_mask_vs_sdpa",
            "compile_vs_eager",
            "nccl_ddp",
        )
    },
    "throughput": {
        "": ("matmul_ceiling",),
        "results/vocab_30522": ("bertflow_eager", "hf_sdpa_eager", "bertflow_compiled", "hf_sdpa_compiled"),
        "results/vocab_8192": ("bertflow_eager", "hf_sdpa_eager", "bertflow_compiled", "hf_sdpa_compiled"),
    },
    "quality": {"": ("data", "pretrain"), "finetune": ("pretrained", "random_init")},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the JSON report (rewritten after every check)")
    parser.add_argument("--dry-run", action="store_true", help="every step, toy shapes, on CPU")
    parser.add_argument("--data", type=Path, default=None, help="dir with corpus/ and glue/ (make gpu-data)")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="carried wheels to install")
    parser.add_argument("--site", type=Path, default=DEFAULT_SITE, help="where the wheels are installed")
    parser.add_argument("--workdir", type=Path, default=None, help="stage outputs (default .bench/gpu-check)")
    parser.add_argument("--budget-s", type=float, default=None, help=f"total seconds ({TOTAL_BUDGET_S:.0f})")
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help="comma-separated subset of the steps (e.g. for a short rerun)",
    )
    parser.add_argument("--resume-worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-stages", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out is None and not (args.resume_worker or args.data_stages):
        parser.error("--out is required")
    args.steps = [name.strip() for name in args.steps.split(",") if name.strip()]
    if not args.steps or set(args.steps) - set(STEPS):
        parser.error(f"--steps: choose from {','.join(STEPS)}")
    return args


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def bootstrap(wheels: Path | None, site: Path) -> dict[str, Any]:
    """Install the carried wheels whose package this Python lacks into ``site``; make it importable.

    ``site`` goes at the END of sys.path (the machine's own packages always win) and into
    PYTHONPATH for the worker processes; only missing packages are installed, so nothing shadows.
    """
    clock = time.perf_counter()
    found = sorted(wheels.glob("*.whl")) if wheels is not None and wheels.is_dir() else []
    missing = [w for w in found if importlib.util.find_spec(w.name.split("-")[0]) is None]
    info: dict[str, Any] = {
        "wheels_dir": str(wheels) if wheels else None,
        "wheels": [w.name for w in found],
        "installed": [],
        "site": None,
        "reason": None,
    }
    if not missing:
        info["reason"] = "every carried package is importable already" if found else "no carried wheels"
        return info
    site.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--disable-pip-version-check",
        "--target",
        str(site),
        *map(str, missing),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        info["reason"] = f"pip install failed ({done.returncode}): {done.stderr[-1500:]}"
        return info
    sys.path.append(str(site))
    importlib.invalidate_caches()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(site)) if p)
    info |= {
        "installed": [w.name for w in missing],
        "site": str(site),
        "seconds": round(time.perf_counter() - clock, 2),
    }
    return info


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def import_probe() -> dict[str, str]:
    """Import what the stages need; an error here names the package that is missing or broken."""
    probe = {}
    for module in ("pydantic", "evaluate", "datasets", "zstandard", "transformers", "tokenizers"):
        try:
            importlib.import_module(module)
            probe[module] = "ok"
        except Exception as exc:
            probe[module] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return probe


def environment(device: Any, boot: dict[str, Any]) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "packages": {name: version(name) for name in REPORTED_PACKAGES},
        "wheels": boot,
        "imports": import_probe(),
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {
            "gpu_memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
        }
    return env


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def clean(value: Any) -> Any:
    """JSON-safe: NaN / inf become null, tuples lists, unknown objects strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


class Report:
    """The JSON on disk, replaced atomically (temp file + rename) on every write."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(clean(self.data), indent=2, allow_nan=False))
        os.replace(tmp, self.path)


def skeleton(args: argparse.Namespace, budget_s: float) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "dry_run": args.dry_run,
        "partial": True,
        "argv": sys.argv,
        "started": now(),
        "finished": None,
        "elapsed_s": None,
        "budget_s": budget_s,
        "environment": {},
        "steps": {
            name: {
                "status": "pending",
                "reason": None,
                "started": None,
                "finished": None,
                "seconds": None,
                "budget_s": None if args.dry_run else STEP_BUDGET_S[name],
            }
            for name in STEPS
        },
    }


def fill_missing(name: str, entry: dict[str, Any]) -> None:
    """Give every expected key of a step an entry: null + the reason it was not reached."""
    why = f"not reached: step {name} {entry.get('status')}" + (
        f" ({entry['reason']})" if entry.get("reason") else ""
    )
    for path, keys in EXPECTED[name].items():
        table = entry
        for part in filter(None, path.split("/")):
            table = table.setdefault(part, {})
        for key in keys:
            table.setdefault(key, {"passed": None, "reason": why})
    if name == "quality":
        entry.setdefault("glue_avg", {"pretrained": None, "random_init": None, "delta": None, "reason": why})


def run_step(
    report: Report, name: str, budget_s: float, deadline: float, body: Callable[[dict, Any], None], ctx: Any
) -> None:
    """One step: timestamps, its budget (capped by the run's deadline), failures caught, keys completed."""
    from benchmarks.gpu_common import Budget

    entry = report.data["steps"][name]
    ctx.budget = Budget(min(time.monotonic() + budget_s, deadline))
    entry.update(status="running", started=now())
    report.write()
    clock = time.perf_counter()
    try:
        body(entry, ctx)
        skipped = [k for k, v in leaves(entry) if str(v.get("reason") or "").startswith("skipped")]
        entry["status"] = "partial" if skipped else "done"
        if skipped:
            entry["reason"] = f"time budget: skipped {skipped}"
    except Exception as exc:  # a broken step must not stop the others
        entry.update(
            status="failed",
            reason=f"{type(exc).__name__}: {str(exc)[:500]}",
            traceback=traceback.format_exc()[-3000:],
        )
    finally:
        entry.update(finished=now(), seconds=round(time.perf_counter() - clock, 2))
        fill_missing(name, entry)
        report.write()


def leaves(entry: dict[str, Any], prefix: str = "") -> list[tuple[str, dict]]:
    """(path, entry) of every check-like dict (one with a 'passed' key) under ``entry``."""
    found = []
    for key, value in entry.items():
        if isinstance(value, dict):
            path = f"{prefix}{key}"
            found += [(path, value)] if "passed" in value else leaves(value, f"{path}/")
    return found


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The short table printed last (the device tool returns the end of the output)."""
    lines = [
        f"gpu_check {'DRY RUN ' if data['dry_run'] else ''}on {data['environment'].get('device_name')}"
        f", torch {data['environment'].get('torch')}, {data['elapsed_s']} s"
    ]
    for name in STEPS:
        step = data["steps"][name]
        lines.append(
            f"[{name}] {step['status']} in {step['seconds']} s"
            + (f": {step['reason']}" if step.get("reason") else "")
        )
        for path, check in leaves({k: v for k, v in step.items() if k != "traceback"}):
            mark = {True: "ok  ", False: "FAIL", None: "--  "}[check.get("passed")]
            figure = "".join(
                f" {key}={check[key]:.4g}"
                for key in (
                    "tokens_per_s",
                    "mfu",
                    "glue_avg",
                    "max_rel_diff",
                    "rel_err_vs_fp64",
                    "loss_rel_diff",
                )
                if isinstance(check.get(key), float)
            )
            why = (
                f"  ({str(check['reason'])[:110]})"
                if check.get("reason") and check.get("passed") is not True
                else ""
            )
            lines.append(f"  {mark} {path}{figure}{why}")
    glue = data["steps"]["quality"].get("glue_avg") or {}
    lines.append(
        f"glue_avg pretrained={glue.get('pretrained')} random_init={glue.get('random_init')} "
        f"delta={glue.get('delta')}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resume_worker is not None:  # exact_resume's fresh process
        from benchmarks.gpu_correctness import resume_worker

        resume_worker(args.resume_worker)
        return 0
    if args.data_stages is not None:  # the data stages' process
        from benchmarks.gpu_quality import data_stages_worker

        data_stages_worker(args.data_stages)
        return 0
    started = time.monotonic()
    budget_s = args.budget_s or (DRY_TOTAL_BUDGET_S if args.dry_run else TOTAL_BUDGET_S)
    deadline = started + budget_s
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: CPU only
        # toy shapes: one thread is fastest, and on a loaded 2-core box two threads spin (100x slower)
        os.environ["OMP_NUM_THREADS"] = "1"
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    boot = bootstrap(args.wheels, args.site)
    report = Report(args.out, skeleton(args, budget_s))

    import torch

    from benchmarks import gpu_correctness, gpu_quality, gpu_throughput
    from benchmarks.gpu_common import Budget, Context
    from benchmarks.gpu_data import write_tiny_data

    if args.dry_run:
        torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report.data["environment"] = environment(device, boot)
    report.write()
    if device.type != "cuda" and not args.dry_run:
        report.data["reason"] = (
            "no CUDA device: the full run is sized for one H100/H200; use --dry-run on CPU"
        )
        report.write()
        print(report.data["reason"], file=sys.stderr)
        return 2
    workdir = (args.workdir or REPO / ".bench" / ("gpu-check-dry" if args.dry_run else "gpu-check")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        if not args.dry_run:
            raise SystemExit("--data DIR is required (make gpu-data fills .gpu/data)")
        data = write_tiny_data(workdir / "dry-data")
    data = data.resolve()
    ctx = Context(
        device=device,
        dry=args.dry_run,
        budget=Budget(deadline),
        workdir=workdir,
        script=Path(__file__).resolve(),
        child_env=dict(os.environ),
        write=report.write,
    )
    bodies = {
        "correctness": gpu_correctness.run,
        "throughput": gpu_throughput.run,
        "quality": lambda entry, c: gpu_quality.run(entry, c, data, stages),
    }
    stages = None
    if "quality" in args.steps:  # the CPU-bound data stages overlap steps 1-2
        stages = gpu_quality.start_data_stages(data, workdir, ctx.script, ctx.child_env, args.dry_run)
    try:
        for name in STEPS:
            if name not in args.steps:
                report.data["steps"][name].update(status="skipped", reason="not selected (--steps)")
                fill_missing(name, report.data["steps"][name])
                continue
            step_budget = budget_s if args.dry_run else STEP_BUDGET_S[name]
            run_step(report, name, step_budget, deadline, bodies[name], ctx)
    finally:
        if stages is not None and stages["proc"].poll() is None:
            stages["proc"].kill()
    report.data |= {"partial": False, "finished": now(), "elapsed_s": round(time.monotonic() - started, 1)}
    report.write()
    print("\n".join(summary_lines(report.data)))
    failed = [p for name in STEPS for p, c in leaves(report.data["steps"][name]) if c.get("passed") is False]
    print(f"wrote {args.out}" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
