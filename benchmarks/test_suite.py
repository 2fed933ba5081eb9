"""How long `make test`'s pytest run takes, and what it ran: every test, skips and failures counted.

    python benchmarks/test_suite.py --out benchmarks/results/test_suite.json

Runs ``.venv/bin/pytest -n 2`` exactly as ``make test`` does (two xdist workers; after ruff and
import-linter, which take seconds), with a JUnit report to count tests by outcome, and records the
wall time, the machine's load and how busy its CPUs were, and the slowest tests and files, so the
"under 12 minutes on 2 cores" target is a measurement. ``--workers N`` tries another worker count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import now, provenance

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2  # the Makefile's `pytest -n 2`


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (Linux)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def counts(junit: Path) -> dict[str, object]:
    """Tests by outcome, and the slowest ones, from pytest's JUnit XML."""
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    outcome = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in cases:
        kinds = {child.tag for child in case}
        key = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        outcome[{"failure": "failed"}.get(key, key)] += 1
    slowest = sorted(cases, key=lambda c: -float(c.get("time", 0)))[:25]
    named = [(f"{c.get('classname')}::{c.get('name')}", float(c.get("time", 0))) for c in slowest]
    per_file: dict[str, float] = {}  # a worker takes whole files (tests/conftest.py): what it balances
    for case in cases:
        parts = str(case.get("classname")).split(".")
        while len(parts) > 1 and parts[-1][:1].isupper():  # tests.test_x.TestThing -> tests.test_x
            parts.pop()
        module = ".".join(parts)
        per_file[module] = per_file.get(module, 0.0) + float(case.get("time", 0))
    files = sorted(per_file.items(), key=lambda kv: -kv[1])
    return outcome | {
        "tests": len(cases),
        "test_seconds_total": round(sum(per_file.values()), 1),
        "slowest": [{"test": t, "seconds": s} for t, s in named],
        "slowest_files": [{"file": f, "seconds": round(s, 1)} for f, s in files[:20]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--workers", type=int, default=WORKERS, help="xdist workers (the Makefile's by default)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        started_utc, started = now(), time.perf_counter()
        load_before, cpu_before = os.getloadavg(), cpu_times()
        pytest = str(REPO / ".venv" / "bin" / "pytest")
        code = subprocess.call([pytest, "-q", "-n", str(args.workers), f"--junitxml={junit}"], cwd=REPO)
        seconds = time.perf_counter() - started
        busy, total = (after - before for after, before in zip(cpu_times(), cpu_before, strict=True))
        result = {
            "provenance": provenance(("pytest", "torch", "prefect", "mlflow"), started_utc),
            "command": f".venv/bin/pytest -q -n {args.workers}",
            "exit_code": code,
            "pytest_seconds": round(seconds, 1),
            "load_average_before_1_5_15": load_before,
            "load_average_after_1_5_15": os.getloadavg(),
            "cpu_busy_fraction": round(busy / total, 3),  # all cores, whole run: what more workers could fill
            **counts(junit),
        }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("slowest", "provenance")}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
