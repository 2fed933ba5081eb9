"""The README's sweep example, measured: ``bertflow sweep`` on the tiny preset with a shipped space.

    python benchmarks/sweep_demo.py --out benchmarks/results/sweep_tiny.json
    python benchmarks/sweep_demo.py --space finetune-lr-batch --trials 6 --parallel 1 --out FILE.json

Runs the real command in a fresh temporary workdir (the demo data, one pre-training and a
fine-tuning per trial, the best trial's dev scoring and registration), then records its wall
time, how many pre-training and fine-tuning stages it built, and the sweep's own ``sweep.json``
(every trial's selection score, the best trial's dev scores, the registration).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import command_line, now, provenance

REPO = Path(__file__).resolve().parents[1]


def built(workdir: Path, stage: str) -> int:
    """Finished artifacts of ``stage`` in the workdir (one per distinct config it was run with)."""
    return sum((d / "manifest.json").is_file() for d in (workdir / stage).glob("*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--space", default="finetune-lr-batch")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    started_utc = now()
    with tempfile.TemporaryDirectory(prefix="bertflow-sweep-") as tmp:
        workdir = Path(tmp) / "w"
        sizes = ["--trials", str(args.trials), "--parallel", str(args.parallel)]
        command = [sys.executable, "-m", "flows.cli", "sweep", "--preset", args.preset, "--space", args.space,
                   *sizes, "--workdir", str(workdir)]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        records = sorted((workdir / "sweep").glob("*/sweep.json"))
        sweep = json.loads(records[0].read_text()) if records else None
        result = {
            "provenance": provenance(("torch", "prefect", "mlflow", "optuna"), started_utc),
            "command": command_line(argv),
            "sweep_command": f"bertflow sweep --preset {args.preset} --space {args.space} "
            f"--trials {args.trials} --parallel {args.parallel} --workdir <scratch>/w",
            "exit_code": done.returncode,
            "seconds": round(seconds, 1),
            "pretrain_stages_built": built(workdir, "pretrain"),
            "finetune_stages_built": built(workdir, "finetune"),
            "sweep": sweep,
            "stdout_tail": done.stdout[-3000:].replace(str(workdir), "<scratch>/w"),
            "stderr_tail": done.stderr[-2000:].replace(str(workdir), "<scratch>/w")
            if done.returncode
            else "",
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str).replace(tmp, "<scratch>")
    args.out.with_suffix(".tmp").write_text(text + "\n")
    os.replace(args.out.with_suffix(".tmp"), args.out)
    print(result["stdout_tail"])
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
