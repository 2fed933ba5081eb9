"""Test-wide settings: offline, quiet, and Prefect's home in a throwaway directory per process.

Set before any test module imports Prefect or MLflow, which read them at import time. The Prefect
home is always a fresh one, never the user's: tests must not touch a real Prefect database.
Under ``CI=true`` a skipped end-to-end or browser test fails the run: CI must run them all.

Under xdist (``make test`` runs two workers) each worker, and every process it starts, gets an
equal share of the cores for its math threads: two workers that each spin two OpenMP threads on
two cores run the demo test more than twice as slowly as one that has a core to itself.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from tasks.run import offline

offline.apply()
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # before torch is imported, inherited by subprocesses
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bertflow-prefect-")

SKIPPED_E2E: list[str] = []


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and don't thrash when other test runs share the CPU
    (a module asks for it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch  # here, not at the top: the thread settings above must precede torch's import

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The longest files first: under `make test`'s two xdist workers they start side by side and the
# short files fill in around them (BENCHMARKS.md "Test suite" has the durations).
LONGEST_FIRST = (
    "tests/test_faults.py", "tests/test_demo.py", "tests/test_t5_demo.py", "tests/test_sweep.py",
    "tests/test_task_runners.py",
    "tests/e2e/", "tests/test_pipeline.py", "tests/test_robust_tracking.py", "tests/test_gpu_check.py",
    "tests/test_pretrain.py",
)  # fmt: skip


def xdist_scope(nodeid: str) -> str:
    """A worker takes whole files (module fixtures are set up once); the e2e files share one server stack."""
    path = nodeid.split("::")[0]
    return "tests/e2e/" if path.startswith("tests/e2e/") else path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        hits = [k for k, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)]
        return hits[0] if hits else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside each file is kept


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Scopes of `xdist_scope`, handed out in collection order (not xdist's largest-file-first)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    config.option.loadscopereorder = False
    return ByFile(config, log)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "e2e" in report.keywords:
        SKIPPED_E2E.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") == "true" and SKIPPED_E2E:
        print(f"\nCI=true: {len(SKIPPED_E2E)} end-to-end or browser test(s) skipped; CI must run them:")
        print("\n".join(f"  {test}" for test in SKIPPED_E2E))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
