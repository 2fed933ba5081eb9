"""Test-wide settings: offline, quiet, and Prefect's home in a throwaway directory per process.

Set before any test module imports Prefect or MLflow, which read them at import time. The Prefect
home is always a fresh one, never the user's: tests must not touch a real Prefect database.
Under ``CI=true`` a skipped end-to-end or browser test fails the run: CI must run them all.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from tasks.run import offline

offline.apply()
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bertflow-prefect-")

SKIPPED_E2E: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "e2e" in report.keywords:
        SKIPPED_E2E.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") == "true" and SKIPPED_E2E:
        print(f"\nCI=true: {len(SKIPPED_E2E)} end-to-end or browser test(s) skipped; CI must run them:")
        print("\n".join(f"  {test}" for test in SKIPPED_E2E))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
