"""Real servers on loopback for the end-to-end and browser tests (one set per test session).

PostgreSQL (127.0.0.1:5432, trust auth) gets a throwaway database for MLflow's backend,
dropped afterwards; Prefect uses SQLite in the state dir. The servers are started by
the same code as ``bertflow server start``; the deployments are served by
``python -m deployments.serve`` in a subprocess, exactly as an operator would.
Screenshots and server logs land in ``tests/e2e/output/`` (or $BERTFLOW_E2E_OUTPUT).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.commands.servers import ServerConfig, start, stop

REPO = Path(__file__).resolve().parents[2]
OUTPUT = Path(os.environ.get("BERTFLOW_E2E_OUTPUT", REPO / "tests" / "e2e" / "output"))
MODEL = "e2e-tiny"
FAST = {  # a tiny preset shrunk to seconds per stage, set through the deployment's UI parameters
    "model_name": MODEL,
    "pretrain_max_steps": 20,
    "finetune_max_steps": 12,
    "eval_max_examples_per_task": 20,
    "baseline_random_init": False,
    "demo_corpus_docs": 600,
    "demo_train_examples": 80,
    "demo_dev_examples": 40,
    "overrides": [
        "tokenizer.vocab_size=512",
        "pretrain.train.eval_every=10",
        "pretrain.eval_batches=2",
        "pretrain.train.checkpoint_every=10",
        "finetune.batch_size=8",
        # the original BERT layout (post-LN, learned positions): the registered model exports to transformers
        'pretrain.shape.norm="post"',
        'pretrain.shape.positions="learned"',
    ],
}
PG_ADMIN = os.environ.get("BERTFLOW_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")


@dataclass(frozen=True)
class Triggered:
    flow_run_id: str
    state: str
    parent_run_id: str
    experiment_id: str


@dataclass(frozen=True)
class Stack:
    prefect_api: str
    prefect_ui: str
    mlflow: str
    workdir: Path
    state: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_listening() -> bool:
    """Whether anything accepts connections at the admin URL's host and port (absent != broken)."""
    address = PG_ADMIN.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = address.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 5432)), timeout=3):
            return True
    except OSError:
        return False


def postgres_admin(sql: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    import psycopg  # a runtime dependency (MLflow on PostgreSQL): never skipped for

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[str]:
    """A fresh database for MLflow's backend store; dropped at the end."""
    name = f"bertflow_e2e_{uuid.uuid4().hex[:8]}"
    if not postgres_listening():
        pytest.skip(f"no PostgreSQL server listening at {PG_ADMIN} (the e2e tests need one)")
    postgres_admin(f"CREATE DATABASE {name}")  # any other failure is an error, not a skip
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    postgres_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def wait_for_deployment(api: str, name: str, timeout_s: float, serve: subprocess.Popen) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout_s
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if serve.poll() is not None:
                raise RuntimeError(f"deployments.serve exited with {serve.returncode}")
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:
                time.sleep(1.0)
    raise TimeoutError(f"deployment {name} not registered after {timeout_s}s")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_db: str) -> Iterator[Stack]:
    """Prefect + MLflow servers (MLflow on PostgreSQL) and a serve process for the tiny deployments."""
    state = tmp_path_factory.mktemp("servers")
    cfg = ServerConfig(
        state_dir=str(state),
        prefect_port=free_port(),
        mlflow_port=free_port(),
        mlflow_backend_uri=postgres_db,
    )
    workdir = tmp_path_factory.mktemp("e2e-runs")
    serve = None
    try:
        start(cfg)
        env = {
            **os.environ,
            "PREFECT_API_URL": cfg.prefect_api_url,
            "PREFECT_HOME": str(state / "client-home"),
        }
        serve_log = (state / "logs" / "serve.log").open("ab")
        serve = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve", "--presets", "tiny", "--workdir-root", str(workdir)],
            cwd=REPO, env=env, stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for_deployment(cfg.prefect_api_url, "bertflow-pipeline/tiny", 120, serve)
        yield Stack(cfg.prefect_api_url, cfg.url("prefect"), cfg.url("mlflow"), workdir, state)
    finally:
        if serve is not None:
            serve.terminate()
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                serve.kill()
        stop(state)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        for log in (state / "logs").glob("*.log"):
            shutil.copy2(log, OUTPUT / log.name)


def trigger(stack: Stack, **params: object) -> Triggered:
    """Run the tiny pipeline deployment through the Prefect API and find its MLflow parent run."""
    parameters = {"params": {"preset": "tiny", "workdir": str(stack.workdir / "tiny"),
                             "tracking_uri": stack.mlflow, **FAST, **params}}  # fmt: skip
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}):
        run = run_deployment(
            "bertflow-pipeline/tiny", parameters=parameters, timeout=480, poll_interval=2, _sync=True
        )
    client = MlflowClient(stack.mlflow)
    experiment = client.get_experiment_by_name("bertflow")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{run.id}'"
    ) if experiment else []  # fmt: skip
    return Triggered(
        str(run.id),
        run.state.type.value if run.state else "UNKNOWN",
        parents[0].info.run_id if parents else "",
        experiment.experiment_id if experiment else "",
    )


@pytest.fixture(scope="session")
def triggered(stack: Stack) -> Triggered:
    """The first tiny run: builds every stage, registers v1 (first champion)."""
    return trigger(stack)


@pytest.fixture(scope="session")
def retriggered(stack: Stack, triggered: Triggered) -> Triggered:
    """A second run with another fine-tuning LR: reuses data + pre-training, registers v2."""
    return trigger(stack, finetune_lr=0.0003)
