"""The UIs a person uses, in headless Debian Chromium (Playwright with ``executable_path``).

1. Prefect: the custom-run form of the ``bertflow-pipeline/tiny`` deployment shows our
   typed parameter fields (titles and descriptions from ``PipelineParameters``).
2. MLflow: the run-comparison page of the two pipeline runs the e2e fixtures made.

Screenshots for a person: ``tests/e2e/output/prefect-run-form.png`` and
``tests/e2e/output/mlflow-compare.png`` (or under $BERTFLOW_E2E_OUTPUT).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack, Triggered

pytestmark = pytest.mark.e2e

OUTPUT = Path(os.environ.get("BERTFLOW_E2E_OUTPUT", Path(__file__).resolve().parent / "output"))
CHROMIUM = os.environ.get("BERTFLOW_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]  # fmt: skip
FIELD_TITLES = ("Pretrain Max Steps", "Finetune Lr", "Tracking Uri", "Demo Corpus Docs")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (make test does it where apt works)"
        )
    from playwright import sync_api  # a test dependency: never skipped for

    executable = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=FLAGS, headless=True)
        yield browser
        browser.close()


def test_prefect_run_form_shows_typed_parameters(stack: Stack, browser: Any) -> None:
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("bertflow-pipeline/tiny")
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.goto(
        f"{stack.prefect_ui}/deployments/deployment/{deployment.id}/run",
        wait_until="domcontentloaded",
        timeout=90_000,
    )
    page.get_by_text("Pretrain Max Steps").first.wait_for(timeout=90_000)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "prefect-run-form.png"), full_page=True)
    text = page.inner_text("body")
    page.close()
    missing = [t for t in FIELD_TITLES if t not in text]
    assert not missing, f"run form lacks {missing}"
    assert "Pre-training optimizer steps." in text  # the field's description is shown as help


def test_mlflow_compares_two_runs(
    stack: Stack, triggered: Triggered, retriggered: Triggered, browser: Any
) -> None:
    runs = quote(json.dumps([triggered.parent_run_id, retriggered.parent_run_id]))
    experiments = quote(json.dumps([triggered.experiment_id]))
    page = browser.new_page(viewport={"width": 1600, "height": 1800})
    page.goto(
        f"{stack.mlflow}/#/compare-runs?runs={runs}&experiments={experiments}",
        wait_until="domcontentloaded",
        timeout=90_000,
    )
    page.get_by_text("pretrain.train.max_steps").first.wait_for(timeout=90_000)
    page.get_by_text("pretrained/glue_avg").first.wait_for(timeout=30_000)  # the metrics table too
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "mlflow-compare.png"), full_page=True)
    text = page.inner_text("body")
    page.close()
    assert "finetune.train.lr" in text and "pretrained/glue_avg" in text
