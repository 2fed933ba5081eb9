"""Pre-training at world size 2 on CPU: two gloo processes under torchrun, launched by the stage.

The same global batch at world size 1 and 2 gives the same loss curve: world 1 with
``grad_accum = 4`` trains on micro-batches 4s..4s+3 at step s; world 2 with ``grad_accum = 2``
gives rank r the micro-batches (2s + m) * 2 + r, the same four, and DDP averages the two ranks'
gradients as accumulation averages the four. Only the order of the fp32 sums differs, which
moves a loss by an ulp or two per step (measured: 1.1e-7 relative over 12 steps, AdamW at a
high LR); the tests allow 1e-5, far below what a wrong batch, a rank-local loss or a missing
all-reduce changes (1e-2 and more). Dropout is 0 there: each rank draws its own masks.

Each torchrun launch takes ~8 s on a 2-core VM (two interpreters importing torch).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from configs import pretrain_cfg, updated
from safetensors.torch import load_file
from test_pretrain import write_inputs

from tasks.sink import MemorySink
from tasks.store.artifact import Artifact
from tasks.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest
REPO = Path(__file__).parents[1]
RTOL = 1e-5

BASE = pretrain_cfg(
    hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, dropout=0.0, batch_size=4, lr=5e-3,
    max_steps=12, eval_every=6, eval_batches=2, checkpoint_every=6, log_every=1, device="cpu",
)  # fmt: skip
WORLD_1 = updated(BASE, grad_accum=4, devices=1)
WORLD_2 = updated(BASE, grad_accum=2, devices=2)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Artifact]:
    return write_inputs(tmp_path_factory.mktemp("ddp-inputs"))


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory: pytest.TempPathFactory):
    """(artifact, sink) of the same 12 steps at world size 1 (in-process) and 2 (torchrun, gloo)."""
    out = {}
    for cfg in (WORLD_1, WORLD_2):
        sink = MemorySink()
        artifact = pretrain(cfg, *inputs, workdir=tmp_path_factory.mktemp(f"ws{cfg.devices}"), sink=sink)
        out[cfg.devices] = artifact, sink
    return out


def weights(artifact: Artifact) -> dict[str, torch.Tensor]:
    return load_file(str(artifact.file("model.safetensors")))


def test_world_size_2_follows_the_loss_curve_of_world_size_1(runs) -> None:
    (one, sink_1), (two, sink_2) = runs[1], runs[2]
    curve_1, curve_2 = sink_1.series("loss"), sink_2.series("loss")
    assert [s for s, _ in curve_2] == list(range(1, 13)) == [s for s, _ in curve_1]
    np.testing.assert_allclose([v for _, v in curve_2], [v for _, v in curve_1], rtol=RTOL)
    assert curve_1[-1][1] < curve_1[0][1] - 0.5  # it trained: equal curves are not two flat lines
    for name in ("grad_norm", "mlm_accuracy", "val_loss"):
        np.testing.assert_allclose([v for _, v in sink_2.series(name)], [v for _, v in sink_1.series(name)],
                                   rtol=RTOL, err_msg=name)  # fmt: skip
    assert two.summary["tokens"] == one.summary["tokens"]  # both ranks' tokens, counted once each
    assert two.summary["steps"] == 12 and two.summary["stop_reason"] == "steps"
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=RTOL, atol=1e-6, msg=key)


def test_only_rank_0_reports(runs) -> None:
    """Each step reaches the stage's sink (MLflow in a pipeline) once: rank 1 writes nothing."""
    _, sink = runs[2]
    steps = [step for step, metrics in sink.history if "loss" in metrics]
    assert steps == sorted(set(steps)) == list(range(1, 13))
    assert [s for s, _ in sink.series("val_loss")] == [6, 12]
    assert sink.last_progress == (12, 12)


CHILD = """
import sys
import torch
from pathlib import Path
from tasks.store.artifact import Artifact
from tasks.sink import MemorySink
from tasks.train.pretrain import pretrain
from tasks.train.pretrain_config import PretrainConfig
torch.set_num_threads(1)
cfg = PretrainConfig.model_validate_json(sys.argv[1])
packed = Artifact(stage="pack", fingerprint="pack0", path=sys.argv[2])
tok = Artifact(stage="tokenizer", fingerprint="tok0", path=sys.argv[3])
sink = MemorySink()
pretrain(cfg, packed, tok, workdir=Path(sys.argv[4]), sink=sink)
print("FIRST_LOGGED", sink.history[0][0])
"""


def test_world_size_2_resumes_exactly_after_sigkill(inputs, tmp_path: Path) -> None:
    """kill -9 of the stage and its torchrun mid-run, rerun: the weights of an uninterrupted run.

    Dropout is on, so the ranks' RNG state (restored from rank 0's checkpoint) matters too.
    """
    cfg = updated(WORLD_2, dropout=0.1, max_steps=120, checkpoint_every=10, log_every=10, eval_every=100)
    packed, tok = inputs

    def launch(workdir: Path) -> subprocess.Popen:
        args = [sys.executable, "-c", CHILD, cfg.model_dump_json(), packed.path, tok.path, str(workdir)]
        env = {**os.environ, "PYTHONPATH": ".", "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(
            args, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, text=True
        )

    child = launch(tmp_path / "killed")
    pattern = str(tmp_path / "killed" / ".scratch" / "pretrain-*" / "trainer_state.pt")
    deadline = time.monotonic() + 120
    while not glob.glob(pattern):
        assert child.poll() is None and time.monotonic() < deadline, "ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)  # the stage and torchrun; the ranks have sessions of their own
    child.wait()
    (state,) = glob.glob(pattern)
    killed_at = torch.load(state, weights_only=True)["step"]
    assert 0 < killed_at < 120
    assert no_rank_left(Path(state).parent), "a rank outlived its launcher"
    assert torch.load(state, weights_only=True)["step"] == killed_at  # nobody trained on after the kill

    rerun, straight = launch(tmp_path / "killed"), launch(tmp_path / "straight")
    out_rerun, _ = rerun.communicate(timeout=180)
    straight.communicate(timeout=180)
    assert rerun.returncode == 0 and straight.returncode == 0
    first_logged = int(out_rerun.split("FIRST_LOGGED")[1].split()[0])
    assert killed_at < first_logged <= killed_at + 10  # continued from the checkpoint, not from step 0
    (a,), (b,) = ((tmp_path / d / "pretrain").glob("*/model.safetensors") for d in ("killed", "straight"))
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    summary = json.loads((a.parent / "metrics.json").read_text())
    assert summary["steps"] == 120


def no_rank_left(scratch: Path, wait_s: float = 5.0) -> bool:
    """True once no process runs a rank of this scratch dir's launch (each rank exits within ~0.2 s)."""
    spec = str(scratch / "launch.json")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        ranks = [p for p in Path("/proc").glob("[0-9]*") if spec in read_cmdline(p)]
        if not ranks:
            return True
        time.sleep(0.1)
    return False


def read_cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_sink_that_raises_stops_the_launched_ranks(tmp_path: Path) -> None:
    """A pruned sweep trial (or a tracking error) raises in the launcher's relay: the job it
    launched must not keep training on its own."""
    from tasks.engine.launch import run_torchrun

    metrics, pid_file = tmp_path / "metrics.jsonl", tmp_path / "pid"
    child = (
        "import json, os, sys, time; open(sys.argv[2], 'w').write(str(os.getpid())); "
        "open(sys.argv[1], 'a').write(json.dumps({'step': 1, 'metrics': {'val_loss': 9.0}}) + '\\n'); "
        "time.sleep(60)"
    )

    class Stop(Exception):
        pass

    class Raising(MemorySink):
        def log_metrics(self, metrics, step):  # type: ignore[no-untyped-def]
            raise Stop("pruned")

    start = time.monotonic()
    with pytest.raises(Stop):
        command = [sys.executable, "-c", child, str(metrics), str(pid_file)]
        run_torchrun(command, metrics, Raising(), poll_s=0.05)
    assert time.monotonic() - start < 30
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(pid, 0)
