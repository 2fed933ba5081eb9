"""What a new user gets from ``make demo`` on a fresh clone: its wall time and its printed table.

    python benchmarks/fresh_clone.py --out benchmarks/results/fresh_clone.json

Clones the committed ``HEAD`` into a temporary directory (so uncommitted edits do not count),
then runs the README's first command there in two timed parts: ``make install`` (the venv and
the packages; pip's download cache on this machine is kept, as a second clone would find it) and
``make demo`` (which finds the install done and runs the pipeline). The printed transfer table
and the registration line are kept as printed, so BENCHMARKS.md can quote them.
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

from benchmarks.provenance import now, provenance

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path) -> tuple[float, int, str]:
    """Seconds, exit code and combined output of ``command`` run in ``cwd``."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode, done.stdout + done.stderr


def printed_table(output: str) -> list[str]:
    """The demo's transfer table: from its ``metric`` header to the first blank line."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("metric ")), None)
    if start is None:
        return []
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    started_utc = now()
    with tempfile.TemporaryDirectory(prefix="bertflow-clone-") as tmp:
        clone = Path(tmp) / "bertflow"
        subprocess.run(["git", "clone", "-q", "--no-local", str(REPO), str(clone)], check=True)
        install_s, install_rc, install_out = timed(["make", "install"], clone)
        demo_s, demo_rc, demo_out = (0.0, -1, "")
        if install_rc == 0:
            demo_s, demo_rc, demo_out = timed(["make", "demo"], clone)
        # No machine's paths in a committed result: the clone is named, not located.
        install_out, demo_out = (text.replace(str(clone), "<clone>") for text in (install_out, demo_out))
    result = {
        "provenance": provenance(("torch", "prefect", "mlflow"), started_utc),
        "install_seconds": round(install_s, 1),
        "install_exit_code": install_rc,
        "demo_seconds": round(demo_s, 1),
        "demo_exit_code": demo_rc,
        "total_seconds": round(install_s + demo_s, 1),
        "table": printed_table(demo_out),
        "registered": [line for line in demo_out.splitlines() if line.startswith("Registered")],
        "output_tail": (install_out if install_rc else demo_out)[-4000:],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("provenance", "output_tail")}, indent=2))
    return 0 if install_rc == demo_rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
