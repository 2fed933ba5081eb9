"""``bertflow status`` on hand-written run records: the last run, interrupted runs, no run at all.

The pipeline itself (every stage ran, then reused, then a failed stage, and the registered
versions with their aliases) is checked on real runs in tests/test_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from tasks.commands.status import status_lines, workdir_status
from tasks.procs import identity
from tasks.run.run_record import RUNS_DIR, RunHeader, StageEntry, record_stage, recorded_run


def header(run_id: str) -> RunHeader:
    return RunHeader(run_id, "tiny", "sqlite:///nowhere.db", "1", model_name=None)


def test_no_run_is_an_error_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["status", "--workdir", str(tmp_path / "typo")]) == 1
    assert "no pipeline run recorded in" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_shows_the_last_run_and_its_stages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with recorded_run(tmp_path, header("older")):
        record_stage(tmp_path, "older", StageEntry("ingest", "ingest").end("ran", fingerprint="a" * 16))
    with pytest.raises(ValueError), recorded_run(tmp_path, header("newer")):
        record_stage(tmp_path, "newer", StageEntry("ingest", "ingest").end("reused", fingerprint="a" * 16))
        record_stage(tmp_path, "newer", StageEntry("pack", "pack").end("failed", error="ValueError: bad row"))
        raise ValueError("bad row")
    assert main(["status", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "preset tiny, failed" in out and "parent run newer" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("ingest", "pack"))}
    assert rows["ingest"][1:3] == ["reused", "0.0"] and rows["ingest"][3] == "a" * 16
    assert rows["pack"][1] == "failed"
    assert "  pack: ValueError: bad row" in out and "this run registers no model" in out


def test_a_run_whose_process_is_gone_shows_interrupted(tmp_path: Path) -> None:
    with recorded_run(tmp_path, header("killed")):
        record_stage(tmp_path, "killed", StageEntry("pretrain", "pretrain"))  # still running
    path = tmp_path / RUNS_DIR / "killed.json"
    record = json.loads(path.read_text())
    dead = identity().rsplit(":", 2)[0] + ":999999999:1"  # this host, a pid that cannot run
    path.write_text(json.dumps(record | {"outcome": "running", "owner": dead}))
    status = workdir_status(tmp_path)
    assert status.record["outcome"] == "interrupted"
    assert [s["outcome"] for s in status.record["stages"]] == ["interrupted"]
    assert "preset tiny, interrupted" in status_lines(status)[0]
    path.write_text(json.dumps(record | {"outcome": "running"}))  # owned by this live process
    assert workdir_status(tmp_path).record["stages"][0]["outcome"] == "running"
