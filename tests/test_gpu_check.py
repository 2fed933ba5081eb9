"""benchmarks/gpu_check.py --dry-run: every step of the GPU check runs on CPU on toy shapes, so it never rots.

The run happens in a fresh process (as on the GPU machine) with Prefect and MLflow made
unimportable in it and in every process it starts (a sitecustomize on PYTHONPATH): the GPU
machine has neither, so the script's import path must touch only the engine, the models and the
pure stage functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"

CHECKS = (
    "bf16_vs_fp32",
    "sdpa_flash_vs_math",
    "sdpa_efficient_vs_math",
    "fused_adamw",
    "flex_document_mask_vs_sdpa",
    "compile_vs_eager",
    "exact_resume",
    "nccl_ddp",
)
VARIANTS = ("bertflow_eager", "hf_sdpa_eager", "bertflow_compiled", "hf_sdpa_compiled")
# checks whose CPU stand-in must run and pass in the dry run
MUST_PASS_ON_CPU = (
    "bf16_vs_fp32",
    "sdpa_flash_vs_math",
    "fused_adamw",
    "flex_document_mask_vs_sdpa",
    "compile_vs_eager",
    "exact_resume",
    "nccl_ddp",
)

BLOCKER = textwrap.dedent(
    """
    # Test-only: importing prefect or mlflow fails, and the attempt is logged (even if caught).
    import importlib.abc, importlib.machinery, os, sys

    BLOCKED = {"prefect", "mlflow"}

    class _Refuse(importlib.abc.Loader):
        def create_module(self, spec):
            with open(os.environ["GPU_CHECK_BLOCKED_LOG"], "a") as log:
                log.write(spec.name + "\\n")
            raise ImportError(f"{spec.name} is blocked: the GPU machine has no Prefect or MLflow")

        def exec_module(self, module):
            raise ImportError(module.__name__)

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return importlib.machinery.ModuleSpec(name, _Refuse())
            return None

    sys.meta_path.insert(0, _Block())
    """
)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("gpu-check")
    (tmp / "block").mkdir()
    (tmp / "block" / "sitecustomize.py").write_text(BLOCKER)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(p for p in (str(tmp / "block"), os.environ.get("PYTHONPATH")) if p),
        "GPU_CHECK_BLOCKED_LOG": str(tmp / "blocked.log"),
    }
    out = tmp / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--workdir", str(tmp / "work")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    sanity_env = env | {"GPU_CHECK_BLOCKED_LOG": str(tmp / "sanity.log")}
    blocker_works = subprocess.run(
        [sys.executable, "-c", "import mlflow"], env=sanity_env, capture_output=True, text=True, timeout=60
    )
    return {
        "done": done,
        "report": json.loads(out.read_text()) if out.is_file() else None,
        "blocked": read_lines(tmp / "blocked.log"),
        "blocker_works": blocker_works.returncode != 0 and read_lines(tmp / "sanity.log") == ["mlflow"],
    }


def read_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.is_file() else []


pytestmark = pytest.mark.slow


def test_dry_run_exits_cleanly_and_writes_the_whole_report(dry_run: dict[str, Any]) -> None:
    done = dry_run["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = dry_run["report"]
    assert report["schema"] == "bertflow.gpu_check/1"
    assert report["dry_run"] is True and report["partial"] is False
    assert report["elapsed_s"] < 120, "the dry run must stay under 2 minutes"
    for key in ("device", "device_name", "torch", "python", "packages", "wheels", "imports"):
        assert key in report["environment"], key
    for name in ("correctness", "throughput", "quality"):
        step = report["steps"][name]
        assert step["status"] == "done", (name, step.get("reason"), step.get("traceback"))
        assert step["started"] and step["finished"] and step["seconds"] is not None


def test_prefect_and_mlflow_are_never_imported(dry_run: dict[str, Any]) -> None:
    assert dry_run["blocker_works"], "the test's import blocker did not block"
    assert dry_run["blocked"] == [], f"the GPU check imported {dry_run['blocked']}"


def test_every_expected_key_is_present(dry_run: dict[str, Any]) -> None:
    steps = dry_run["report"]["steps"]
    assert set(steps["correctness"]["checks"]) >= set(CHECKS)
    throughput = steps["throughput"]
    for key in ("peak", "matmul_ceiling", "batch", "seq_len", "shape"):
        assert key in throughput, key
    assert "table_entry" in throughput["peak"]
    for vocab in ("vocab_30522", "vocab_8192"):
        table = throughput["results"][vocab]
        assert table["flops_per_token"] > 0
        for variant in VARIANTS:
            assert {"passed", "reason", "tokens_per_s", "mfu", "started", "seconds"} <= set(table[variant])
    quality = steps["quality"]
    for key in ("data", "pretrain", "glue_avg"):
        assert key in quality, key
    assert set(quality["finetune"]) == {"pretrained", "random_init"}
    assert {"pretrained", "random_init", "delta"} <= set(quality["glue_avg"])


def checks_of(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(path, entry) of every check-like entry (one with a 'passed' key)."""
    found = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                if "passed" in value:
                    found.append((f"{path}{key}", value))
                else:
                    walk(value, f"{path}{key}/")

    walk(report["steps"], "")
    return found


def test_nothing_fails_and_every_null_says_why(dry_run: dict[str, Any]) -> None:
    found = checks_of(dry_run["report"])
    assert len(found) >= len(CHECKS) + 1 + 2 * len(VARIANTS) + 4
    for path, entry in found:
        assert entry["passed"] is not False, (path, entry.get("reason"), entry.get("traceback"))
        assert "started" in entry and "seconds" in entry, path
        if entry["passed"] is None:
            assert isinstance(entry["reason"], str) and entry["reason"].strip(), path
    for vocab in ("vocab_30522", "vocab_8192"):
        for variant, entry in dry_run["report"]["steps"]["throughput"]["results"][vocab].items():
            if isinstance(entry, dict) and entry.get("tokens_per_s") is None:
                assert entry["reason"], (vocab, variant)


def test_correctness_checks_pass_on_cpu(dry_run: dict[str, Any]) -> None:
    checks = dry_run["report"]["steps"]["correctness"]["checks"]
    for key in MUST_PASS_ON_CPU:
        assert checks[key]["passed"] is True, (key, checks[key].get("reason"))
    assert checks["sdpa_efficient_vs_math"]["passed"] is None  # a CUDA-only kernel
    resume = checks["exact_resume"]
    assert resume["resumed_from_step"] == 15 and resume["steps_compared"] == list(range(16, 31))
    assert resume["bit_exact"] is True  # CPU kernels are deterministic
    assert checks["compile_vs_eager"]["steps"] == 20
    assert checks["bf16_vs_fp32"]["linear_output_dtypes_under_autocast"].get("torch.bfloat16", 0) > 0


def test_quality_step_runs_the_real_stages(dry_run: dict[str, Any]) -> None:
    quality = dry_run["report"]["steps"]["quality"]
    assert quality["data"]["passed"] is True
    assert set(quality["data"]["stage_seconds"]) == {"ingest", "dedup", "tokenizer", "pack"}
    assert quality["pretrain"]["summary"]["steps"] > 0
    for run in ("pretrained", "random_init"):
        finetune = quality["finetune"][run]
        assert set(finetune["per_task"]) == {"CoLA", "SST-2", "MRPC", "STS-B", "RTE"}
        assert isinstance(finetune["glue_avg"], float)
    assert isinstance(quality["glue_avg"]["delta"], float)
