"""Fault suite: real `bertflow run` processes killed, damaged, cut off and raced; every re-run must
end with the uninterrupted run's result, no artifact lost or corrupted, and no MLflow run RUNNING.

Faults (each a separate `bertflow run` process on a shrunken tiny preset):
- ``kill -9`` at a random point inside every stage, in turn, on one workdir: each re-run resumes
  where the last one died (the killed stage is rebuilt or resumed, finished ones are reused);
- a truncated file and a flipped byte in finished stage directories;
- the MLflow tracking server stopped during pre-training, then restarted;
- two `bertflow run` on one workdir at the same moment.
The counts are written to ``$BERTFLOW_FAULTS_OUT`` when set (BENCHMARKS.md "Reliability").
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks.commands.servers import ServerConfig, start, stop
from tasks.store.digest import sha256_file
from tasks.store.manifest import read_manifest, verify

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
STAGES = ("demo-data", "ingest", "dedup", "tokenizer", "pack", "pretrain", "finetune", "evaluate", "register")
FAST = [
    "demo.n_corpus_docs=600", "demo.n_train=80", "demo.n_dev=40", "tokenizer.vocab_size=512",
    "pretrain.train.max_steps=40", "pretrain.train.eval_every=10", "pretrain.eval_batches=2",
    "pretrain.train.checkpoint_every=5", "finetune.train.max_steps=12", "finetune.batch_size=8",
    "finetune.train.checkpoint_every=4", "evaluate.max_examples_per_task=20", "registry.model_name=faults",
]  # fmt: skip


@dataclass
class Tally:
    injected: dict[str, int] = field(default_factory=dict)
    recovered: int = 0
    lost_or_corrupted: int = 0
    running_left: int = 0

    def add(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    counts = Tally()
    yield counts
    out = os.environ.get("BERTFLOW_FAULTS_OUT")
    if out:
        payload = {
            "command": "BERTFLOW_FAULTS_OUT=benchmarks/results/faults.json .venv/bin/pytest -m faults",
            "faults_injected": counts.injected,
            "faults_total": sum(counts.injected.values()),
            "runs_recovered": counts.recovered,
            "artifacts_lost_or_corrupted": counts.lost_or_corrupted,
            "mlflow_runs_left_running": counts.running_left,
            "date": time.strftime("%Y-%m-%d"),
        }
        Path(out).write_text(json.dumps(payload, indent=2) + "\n")


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server for every run of the suite (an ephemeral one per process costs ~10 s)."""
    cfg = ServerConfig(state_dir=str(tmp_path_factory.mktemp("prefect")), prefect_port=free_port())
    start(cfg, ("prefect",))
    yield cfg.prefect_api_url
    stop(cfg.root, ("prefect",))


def launch(workdir: Path, api: str, *overrides: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    sets = [f"--set={o}" for o in (*FAST, *overrides)]
    command = [sys.executable, "-m", "flows.cli", "run", "--preset", "tiny", "--workdir", str(workdir), *sets]
    full_env = {**os.environ, "PREFECT_API_URL": api, **(env or {})}
    return subprocess.Popen(command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def building(workdir: Path, stage: str) -> list[Path]:
    """Temporary build directories of ``stage`` (the demo builds beside its fixed output dir)."""
    if stage == "demo-data":
        return list(workdir.glob(".tmp-demo-data-*"))
    return list((workdir / stage).glob(".tmp-*"))


def finished(workdir: Path, stage: str) -> list[Path]:
    if stage == "demo-data":
        return [workdir / "demo-data"] if (workdir / "demo-data" / "manifest.json").is_file() else []
    return [p for p in (workdir / stage).glob("*") if (p / "manifest.json").is_file()]


def kill_inside(proc: subprocess.Popen, workdir: Path, stage: str, delay: float) -> bool:
    """SIGKILL the run ``delay`` s after ``stage`` starts building; True if it died inside the stage."""
    before = set(building(workdir, stage))  # leftovers of earlier kills
    deadline = time.monotonic() + 300
    while not set(building(workdir, stage)) - before:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"run ended before {stage} started: {finish(proc)[2][-3000:]}")
        time.sleep(0.002)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGSTOP)  # freeze it, then look where it is
    inside = bool(set(building(workdir, stage)) - before)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return inside


def results(workdir: Path, tracking_uri: str | None = None) -> dict[str, object]:
    """What a run produced: weights of the checkpoints, dev scores, registry state."""

    def weights(stage: str, init: str | None = None) -> str:
        def config(d: Path) -> dict:
            return json.loads((d / "manifest.json").read_text())["key"]["config"]

        dirs = [d for d in finished(workdir, stage) if config(d).get("init") == init]
        assert len(dirs) == 1, (stage, init, dirs)
        return sha256_file(dirs[0] / "model.safetensors")

    reports = [json.loads((d / "report.json").read_text())["per_task"] for d in finished(workdir, "evaluate")]
    client = MlflowClient(tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'faults'")
    return {
        "pretrained_weights": weights("pretrain"),
        "finetuned_weights": weights("finetune", "pretrained"),
        "random_init_weights": weights("finetune", "random"),
        "scores": sorted(json.dumps(r, sort_keys=True) for r in reports),
        "versions": sorted(str(v.version) for v in versions),
        "champion": str(client.get_registered_model("faults").aliases.get("champion")),
    }


def damaged_artifacts(workdir: Path) -> list[str]:
    problems = []
    for manifest in workdir.rglob("manifest.json"):
        record = read_manifest(manifest.parent)
        if record is not None and "files" in record:
            problems += [f"{manifest.parent}: {p}" for p in verify(manifest.parent, record)]
    return problems


def running_runs(tracking_uri: str) -> list[str]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("bertflow")
    if experiment is None:
        return []
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    return [r.info.run_id for r in running]


def check_recovered(tally: Tally, workdir: Path, reference: dict, tracking_uri: str | None = None) -> None:
    uri = tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    got, damage, running = results(workdir, uri), damaged_artifacts(workdir), running_runs(uri)
    tally.lost_or_corrupted += len(damage) + (got != reference)
    tally.running_left += len(running)
    assert got == reference and not damage and not running, (got, reference, damage, running)
    tally.recovered += 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> tuple[dict, dict[str, float]]:
    """An uninterrupted run: its results, and how long each stage's build took (to aim the kills)."""
    workdir = tmp_path_factory.mktemp("reference")
    code, _, err = finish(launch(workdir, prefect_api))
    assert code == 0, err[-3000:]

    def build_seconds(d: Path) -> float:
        return json.loads((d / "manifest.json").read_text())["build_seconds"]

    # the shorter build where a stage builds twice (fine-tune and evaluate: two inits)
    seconds = {stage: min(build_seconds(d) for d in finished(workdir, stage)) for stage in STAGES}
    return results(workdir), seconds


@pytest.fixture(scope="module")
def killed_in_turn(tmp_path_factory: pytest.TempPathFactory, prefect_api: str, reference, tally) -> tuple:
    """One workdir, one run after another, each ``kill -9``-ed at a random point inside the next stage."""
    workdir = tmp_path_factory.mktemp("killed")
    _, seconds = reference
    rng = random.Random(0)
    killed = []
    for stage in STAGES:
        for attempt in range(6):
            proc = launch(workdir, prefect_api)
            delay = rng.uniform(0.0, 0.9) * seconds[stage] / 2**attempt
            landed = kill_inside(proc, workdir, stage, delay)
            tally.add("kill -9" if landed else "kill -9 (landed in a later stage)")
            if landed:
                killed.append(stage)
                break
            for later in STAGES[STAGES.index(stage) :]:  # it finished first: the next run rebuilds from here
                for done in finished(workdir, later):
                    (done / "manifest.json").unlink()
    code, _, err = finish(launch(workdir, prefect_api))
    return workdir, killed, code, err


def test_kill_9_inside_every_stage_then_rerun(killed_in_turn, reference, tally) -> None:
    workdir, killed, code, err = killed_in_turn
    assert code == 0, err[-3000:]
    assert killed == list(STAGES)
    check_recovered(tally, workdir, reference[0])


def test_truncated_and_flipped_files_are_rebuilt(killed_in_turn, prefect_api: str, reference, tally) -> None:
    workdir = killed_in_turn[0]
    (packed,) = finished(workdir, "pack")
    train = packed / "train.bin"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])  # truncated
    (tok,) = finished(workdir, "tokenizer")
    data = bytearray((tok / "tokenizer.json").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (tok / "tokenizer.json").write_bytes(bytes(data))
    tally.add("truncated file")
    tally.add("flipped byte")
    code, _, err = finish(launch(workdir, prefect_api))
    assert code == 0, err[-3000:]
    assert "train.bin:" in err and "tokenizer.json: content differs" in err and "rebuilding" in err
    check_recovered(tally, workdir, reference[0])


def test_tracking_server_stopped_mid_run_then_restarted(
    tmp_path: Path, prefect_api: str, reference, tally: Tally
) -> None:
    expected, _ = reference
    cfg = ServerConfig(state_dir=str(tmp_path / "mlflow-server"), mlflow_port=free_port())
    start(cfg, ("mlflow",))
    uri = cfg.url("mlflow")
    quick_fail = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    try:
        proc = launch(tmp_path / "w", prefect_api, f'tracking.tracking_uri="{uri}"', env=quick_fail)
        deadline = time.monotonic() + 300
        while not building(tmp_path / "w", "pretrain"):
            assert proc.poll() is None and time.monotonic() < deadline, finish(proc)[2][-3000:]
            time.sleep(0.01)
        stop(cfg.root, ("mlflow",))
        tally.add("tracking server stopped")
        code, _, err = finish(proc)
        assert code != 0  # the run fails: it cannot record what it does
        start(cfg, ("mlflow",))
        code, _, err = finish(launch(tmp_path / "w", prefect_api, f'tracking.tracking_uri="{uri}"'))
        assert code == 0, err[-3000:]
        check_recovered(tally, tmp_path / "w", expected, uri)
    finally:
        stop(cfg.root, ("mlflow",))


def test_two_runs_on_one_workdir_at_once(tmp_path: Path, prefect_api: str, reference, tally: Tally) -> None:
    expected, _ = reference
    procs = [launch(tmp_path, prefect_api) for _ in range(2)]
    tally.add("concurrent run")
    outcomes = [finish(p) for p in procs]
    assert [code for code, _, _ in outcomes] == [0, 0], [err[-2000:] for _, _, err in outcomes]
    closing = sorted(out.split("Dev-set scores")[1].split("\n\n")[1].split("\n")[0] for _, out, _ in outcomes)
    assert closing[0].startswith("Registered faults v1") and closing[1].startswith("Reused faults v1")
    check_recovered(tally, tmp_path, expected)
