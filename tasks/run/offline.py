"""The offline, quiet settings every bertflow process starts with: one list, used by the CLI and tests.

Prefect, MLflow and the Hugging Face libraries read these at import time, so ``apply()`` must
run before they are imported (the CLI and tests/conftest.py call it first thing). A variable
the user already set always wins. ``make demo`` and ``make test`` get them through the CLI and
the test suite, so the Makefile keeps no copy.
"""

from __future__ import annotations

import os

QUIET_OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,models,registry",
    "GIT_PYTHON_REFRESH": "quiet",
    # the ephemeral Prefect API starts in a subprocess; a loaded 2-core machine needs more than 20 s
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def apply() -> None:
    """Set every default the environment does not already set."""
    for key, value in QUIET_OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
