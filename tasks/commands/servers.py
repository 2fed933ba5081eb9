"""``bertflow server start|stop|status``: a Prefect server and an MLflow server on loopback.

Both run as detached child processes (own session, so ``stop`` can signal the whole
process group: the MLflow server forks uvicorn workers) with a pid file, a JSON record
of how they were started and a log under the state directory:

    <state_dir>/prefect.pid  prefect.json  logs/prefect.log  prefect-home/
    <state_dir>/mlflow.pid   mlflow.json   logs/mlflow.log   mlartifacts/  mlflow.db

Databases: SQLite inside the state directory by default; a PostgreSQL URL (e.g.
``postgresql://127.0.0.1:5432/mlflow``) for either server when given. The Prefect UI is
told its API URL (``PREFECT_UI_API_URL``), so it works on a non-default port. Telemetry
is off for both. Nothing here imports Prefect or MLflow: they are started as programs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.procs import start_time

log = logging.getLogger(__name__)

ServerName = Literal["prefect", "mlflow"]
SERVERS: tuple[ServerName, ...] = ("prefect", "mlflow")
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


class ServerError(RuntimeError):
    """A server that would not start, or a port already taken."""


class ServerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: str = Field(description="Directory for pid files, logs and the SQLite databases.")
    host: str = Field("127.0.0.1", description="Interface both servers bind to (loopback by default).")
    prefect_port: int = Field(4200, ge=1, le=65535, description="Prefect API + UI port.")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow tracking server + UI port.")
    mlflow_backend_uri: str | None = Field(
        None, description="MLflow backend store (e.g. postgresql://127.0.0.1:5432/mlflow); None: SQLite."
    )
    prefect_database_url: str | None = Field(
        None, description="Prefect database (postgresql+asyncpg://...); None: SQLite in the state dir."
    )
    start_timeout_s: float = Field(120.0, gt=0, le=3600, description="Seconds to wait for /health.")

    @property
    def root(self) -> Path:
        return Path(self.state_dir).resolve()

    def url(self, name: ServerName) -> str:
        port = self.prefect_port if name == "prefect" else self.mlflow_port
        return f"http://{self.host}:{port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.url('prefect')}/api"


def health_url(name: ServerName, base: str) -> str:
    return f"{base}/api/health" if name == "prefect" else f"{base}/health"


def is_healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def bin_path(program: str) -> str:
    """The program installed next to this interpreter (the venv's), so PATH does not matter."""
    candidate = Path(sys.executable).with_name(program)
    return str(candidate) if candidate.exists() else program


def prefect_command(cfg: ServerConfig) -> tuple[list[str], dict[str, str]]:
    env = {
        "PREFECT_HOME": str(cfg.root / "prefect-home"),
        "PREFECT_UI_API_URL": cfg.prefect_api_url,
        "PREFECT_API_URL": cfg.prefect_api_url,
        "PREFECT_SERVER_API_HOST": cfg.host,
        "PREFECT_SERVER_API_PORT": str(cfg.prefect_port),
    }
    if cfg.prefect_database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = cfg.prefect_database_url
    cmd = [bin_path("prefect"), "server", "start", "--host", cfg.host, "--port", str(cfg.prefect_port)]
    return cmd, env


def mlflow_command(cfg: ServerConfig) -> tuple[list[str], dict[str, str]]:
    backend = cfg.mlflow_backend_uri or f"sqlite:///{cfg.root / 'mlflow.db'}"
    cmd = [
        bin_path("mlflow"), "server", "--host", cfg.host, "--port", str(cfg.mlflow_port),
        "--backend-store-uri", backend, "--artifacts-destination", str(cfg.root / "mlartifacts"),
        "--serve-artifacts", "--workers", "1",
    ]  # fmt: skip
    # MLflow's GenAI job runner (huey consumers) is of no use to bertflow and costs four processes
    return cmd, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def pid_file(root: Path, name: ServerName) -> Path:
    return root / f"{name}.pid"


def read_pid(root: Path, name: ServerName) -> int | None:
    """The recorded pid if that process still runs AND is the one we started, else None.

    A pid file outlives its process; the kernel may since have given the number to an
    unrelated process. The start time recorded at spawn (``tasks.procs``) tells them apart,
    so ``stop`` never signals a stranger.
    """
    path = pid_file(root, name)
    if not path.is_file():
        return None
    try:
        pid = int(path.read_text().strip())
        started = json.loads((root / f"{name}.json").read_text()).get("start_time")
    except (ValueError, FileNotFoundError):
        return None
    if not process_alive(pid):
        return None
    if started is None or start_time(pid) != started:
        log.warning("%s: pid %d is no longer the %s server we started; not touching it", path, pid, name)
        return None
    return pid


def spawn(root: Path, name: ServerName, cmd: list[str], env: Mapping[str, str], url: str) -> int:
    """Start one server detached, record pid + how it was started; returns the pid."""
    (root / "logs").mkdir(parents=True, exist_ok=True)
    log_file = (root / "logs" / f"{name}.log").open("ab")
    full_env = {**os.environ, **TELEMETRY_OFF, **env}
    proc = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
        start_new_session=True,
    )  # fmt: skip
    record = {"url": url, "command": cmd, "env": dict(env), "start_time": start_time(proc.pid)}
    (root / f"{name}.json").write_text(json.dumps(record, indent=2))
    pid_file(root, name).write_text(str(proc.pid))
    return proc.pid


def wait_healthy(name: ServerName, cfg: ServerConfig, pid: int) -> None:
    deadline = time.monotonic() + cfg.start_timeout_s
    url = health_url(name, cfg.url(name))
    while time.monotonic() < deadline:
        if is_healthy(url):
            return
        if read_pid(cfg.root, name) is None:
            raise ServerError(f"{name} server exited during start; see {cfg.root / 'logs' / f'{name}.log'}")
        time.sleep(0.5)
    stop_one(cfg.root, name)
    raise ServerError(f"{name} server not healthy at {url} after {cfg.start_timeout_s:.0f}s; see its log")


def start(cfg: ServerConfig, which: tuple[ServerName, ...] = SERVERS) -> dict[str, str]:
    """Start the servers not already running; returns name -> URL once each answers /health."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    builders = {"prefect": prefect_command, "mlflow": mlflow_command}
    started: dict[str, int] = {}
    for name in which:
        if read_pid(cfg.root, name) is not None:
            continue
        if is_healthy(health_url(name, cfg.url(name)), timeout_s=0.5):
            raise ServerError(f"port of {name} ({cfg.url(name)}) is already served by another process")
        cmd, env = builders[name](cfg)
        started[name] = spawn(cfg.root, name, cmd, env, cfg.url(name))
    for name, pid in started.items():  # both boot concurrently, then wait for each
        wait_healthy(name, cfg, pid)
    return {name: cfg.url(name) for name in which}


def stop_one(root: Path, name: ServerName, timeout_s: float = 20.0) -> bool:
    """SIGTERM the server's process group, SIGKILL it after ``timeout_s``; False if it was not running."""
    pid = read_pid(root, name)
    pid_file(root, name).unlink(missing_ok=True)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return True
            time.sleep(0.2)
    return True


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to signal 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def stop(root: Path, which: tuple[ServerName, ...] = SERVERS) -> dict[str, bool]:
    return {name: stop_one(root.resolve(), name) for name in which}


def status(root: Path) -> dict[str, dict[str, object]]:
    """Per server: pid (None if not running), URL, and whether /health answers."""
    root = root.resolve()
    report: dict[str, dict[str, object]] = {}
    for name in SERVERS:
        record = root / f"{name}.json"
        url = json.loads(record.read_text())["url"] if record.is_file() else None
        pid = read_pid(root, name)
        healthy = bool(url) and pid is not None and is_healthy(health_url(name, str(url)))
        report[name] = {"pid": pid, "url": url, "healthy": healthy}
    return report
