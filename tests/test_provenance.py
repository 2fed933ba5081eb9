"""Benchmark results name no machine's paths: what `benchmarks/provenance.py` writes for a command."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is scripts, not installed

from benchmarks.provenance import REPO, command_line, portable_path


def test_paths_are_written_relative_or_as_scratch() -> None:
    assert portable_path(REPO / "benchmarks" / "results" / "x.json") == "benchmarks/results/x.json"
    assert portable_path(REPO.parent / "shared" / "data") == "../shared/data"
    assert portable_path("/tmp/bertflow-xyz/work") == "<scratch>/work"
    assert portable_path("relative/dir") == "relative/dir"
    line = command_line(["benchmarks/b.py", "--workdir", "/tmp/w1", f"--data={REPO.parent / 'shared'}"])
    assert line == "python benchmarks/b.py --workdir <scratch>/w1 --data=../shared"
