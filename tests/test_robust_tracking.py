"""A killed or mis-configured ``bertflow run`` never leaves MLflow runs RUNNING nor starts work.

Real subprocesses of the CLI: one is SIGTERMed in the middle of pre-training (its
parent and pretrain runs must end KILLED, the finished stages FINISHED; its piped output has
plain progress lines and no bar); one points at a tracking server that is not there and must
fail in seconds, before any stage runs. Prefect must show the killed run Crashed / Failed too
(read from the run's own Prefect database).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from registry.tracking import default_tracking_uri

pytestmark = pytest.mark.e2e

SHRINK = [
    "demo.n_corpus_docs=600", "demo.n_train=80", "demo.n_dev=40", "tokenizer.vocab_size=512",
    "pretrain.train.max_steps=100000", "pretrain.train.max_minutes=30.0", "pretrain.train.log_every=1",
    "pretrain.train.eval_every=0",
    "pretrain.train.checkpoint_every=0", "baseline_random_init=false", "registry.model_name=sigterm-test",
]  # fmt: skip


def bertflow(workdir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.cli", "run", "--preset", "tiny", "--workdir", str(workdir)]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    unset = ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI")  # so all of it lands in the workdir
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_pretrain_steps(client: MlflowClient, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until the pretrain run has logged a few losses (training is really under way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"bertflow run ended early:\n{proc.stdout.read() if proc.stdout else ''}"
        experiment = client.get_experiment_by_name("bertflow")
        runs = (
            client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'pretrain'")
            if experiment
            else []
        )
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 3:
            return
        time.sleep(1.0)
    raise TimeoutError("pre-training did not start logging in time")


def test_sigterm_mid_pretraining_marks_runs_killed(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    proc = bertflow(workdir, *SHRINK)
    client = MlflowClient(default_tracking_uri(workdir))
    try:
        wait_for_pretrain_steps(client, proc, timeout_s=240)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output
    # piped, not a terminal: plain progress lines, no bar, no carriage return
    assert re.search(r"^pretrain step \d+/\d+ loss \d+\.\d{4} tokens/s \d+", output, re.M), output[-3000:]
    assert re.search(r"^ingest 1/1 in \d+s$", output, re.M) and "\r" not in output
    experiment = client.get_experiment_by_name("bertflow")
    status = {r.info.run_name: r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert status["pipeline-tiny"] == "KILLED" and status["pretrain"] == "KILLED", status
    assert {status[s] for s in ("ingest", "dedup", "tokenizer", "pack")} == {"FINISHED"}
    assert "RUNNING" not in status.values()
    assert "finetune-pretrained" not in status  # nothing ran after the kill
    assert prefect_states(workdir / "prefect" / "prefect.db")["pipeline"] in ("CRASHED", "FAILED")


def prefect_states(db: Path) -> dict[str, str]:
    """flow name -> state type of its run, read from the run's own (ephemeral) Prefect database."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id")
        return dict(rows.fetchall())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_fails_fast_before_any_stage(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    started = time.monotonic()
    proc = bertflow(workdir, f'tracking.tracking_uri="http://127.0.0.1:{closed_port()}"')
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "is unreachable" in output and "bertflow server start" in output
    assert time.monotonic() - started < 60
    assert not (workdir / "demo-data").exists() and not (workdir / "ingest").exists()
