"""Test-wide settings: offline, quiet, and Prefect's home in a throwaway directory.

Set before any test module imports Prefect or MLflow, which read them at import time.
"""

from __future__ import annotations

import os
import tempfile

for _key, _value in {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    # the ephemeral Prefect API starts in a subprocess; on a loaded 2-core CI box 20 s is too short
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bertflow-prefect-"))
