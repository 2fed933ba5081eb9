"""Server management without booting the real servers (the e2e tests start them for real)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from flows.cli import main
from tasks.commands.servers import (
    ServerConfig,
    ServerError,
    mlflow_command,
    prefect_command,
    read_pid,
    start,
    status,
    stop,
)


def config(tmp_path: Path, **kw: object) -> ServerConfig:
    return ServerConfig(state_dir=str(tmp_path), prefect_port=4321, mlflow_port=5321, **kw)


def test_prefect_ui_is_told_its_api_url_on_a_custom_port(tmp_path: Path) -> None:
    cmd, env = prefect_command(config(tmp_path))
    assert cmd[-4:] == ["--host", "127.0.0.1", "--port", "4321"]
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4321/api"
    assert env["PREFECT_HOME"] == str(tmp_path.resolve() / "prefect-home")
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in env  # SQLite in PREFECT_HOME by default
    _, env = prefect_command(config(tmp_path, prefect_database_url="postgresql+asyncpg://127.0.0.1:5432/p"))
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://127.0.0.1:5432/p"


def test_mlflow_backend_sqlite_by_default_postgres_when_given(tmp_path: Path) -> None:
    cmd, _ = mlflow_command(config(tmp_path))
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--serve-artifacts" in cmd
    cmd, _ = mlflow_command(config(tmp_path, mlflow_backend_uri="postgresql://127.0.0.1:5432/mlflow"))
    assert cmd[cmd.index("--backend-store-uri") + 1] == "postgresql://127.0.0.1:5432/mlflow"


def test_status_and_stop_when_nothing_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert stop(tmp_path) == {"prefect": False, "mlflow": False}
    assert status(tmp_path)["mlflow"] == {"pid": None, "url": None, "healthy": False}
    assert main(["server", "status", "--state-dir", str(tmp_path)]) == 3  # non-zero: not healthy
    assert "prefect: stopped" in capsys.readouterr().out


def test_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (tmp_path / "mlflow.pid").write_text(str(proc.pid))  # that process is gone
    assert read_pid(tmp_path, "mlflow") is None


def test_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    """A pid file naming a live process that is not the server we started (pid reused): left alone."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "mlflow.pid").write_text(str(stranger.pid))
        (tmp_path / "mlflow.json").write_text(json.dumps({"url": "http://127.0.0.1:1", "start_time": "1"}))
        assert read_pid(tmp_path, "mlflow") is None
        assert stop(tmp_path, ("mlflow",)) == {"mlflow": False}
        assert stranger.poll() is None  # still running: not ours to kill
    finally:
        stranger.kill()
        stranger.wait()


@pytest.fixture
def foreign_health_server(tmp_path: Path) -> Iterator[int]:
    """Something else answering /health on a port (a plain file server with a 'health' file)."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "health").write_text("ok")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_refuses_a_port_already_served(tmp_path: Path, foreign_health_server: int) -> None:
    cfg = ServerConfig(state_dir=str(tmp_path / "state"), mlflow_port=foreign_health_server)
    with pytest.raises(ServerError, match="already served by another process"):
        start(cfg, ("mlflow",))
    assert read_pid(cfg.root, "mlflow") is None
