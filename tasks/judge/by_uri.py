"""Evaluate any model without re-training: a local checkpoint dir or an MLflow model URI.

Backs ``bertflow evaluate MODEL_URI``. The model's files are identified by their
CONTENT (a hash of every file but the stage manifest), not by the URI: an alias such as
``@champion`` moves between versions, so the files are downloaded afresh on every call,
and the evaluate stage's content-addressed cache then reuses a finished report when
the same weights are evaluated with the same EvalConfig again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from registry.download import download_model, is_mlflow_uri
from registry.tracking import default_tracking_uri
from tasks.downstream.modelset import FINETUNE_INFO, MEMBERS
from tasks.judge.evaluation import REPORT, EvalConfig, evaluate_checkpoint
from tasks.sink import MetricSink
from tasks.store.artifact import Artifact
from tasks.store.digest import json_digest
from tasks.store.manifest import file_table
from tasks.store.ownership import OWNER_MARK, remove_owned

log = logging.getLogger(__name__)

MODELS_DIR = "models"  # <workdir>/models/<content hash>/: downloaded model files


class ModelDirError(ValueError):
    """A local path that is not a fine-tuned checkpoint / model-set directory."""


def content_fingerprint(directory: Path) -> str:
    """Digest of every file's relative path, size and sha256 (bookkeeping files excluded)."""
    return json_digest(file_table(directory))


def check_model_dir(directory: Path, uri: str) -> Path:
    """`directory` if it holds a checkpoint (config.json) or a model set (members.json / finetune.json)."""
    if not directory.is_dir():
        raise ModelDirError(f"{uri!r}: {directory} is not a directory (nor a models:/ or runs:/ URI)")
    if not any((directory / name).is_file() for name in ("config.json", MEMBERS, FINETUNE_INFO)):
        raise ModelDirError(f"{uri!r}: {directory} holds no config.json / {MEMBERS}: not a fine-tuned model")
    return directory


def fetch(uri: str, workdir: Path, tracking_uri: str) -> Path:
    """Download an MLflow model into ``<workdir>/models/<content hash>/`` (kept once per content)."""
    (workdir / MODELS_DIR).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=workdir / MODELS_DIR))
    try:
        local = check_model_dir(download_model(uri, tracking_uri, tmp), uri)
        target = workdir / MODELS_DIR / content_fingerprint(local)
        if target.exists() and content_fingerprint(target) != target.name:
            log.warning("%s: damaged copy of %s, replacing it", target, uri)
            remove_owned(target)
        if not target.exists():
            (local / OWNER_MARK).write_text("{}")
            local.rename(target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def evaluate_model_uri(
    uri: str,
    cfg: EvalConfig,
    workdir: Path,
    *,
    tracking_uri: str | None = None,
    sink: MetricSink | None = None,
) -> dict:
    """Evaluate the model at `uri` on `cfg.tasks`' dev sets; returns the report (see tasks.judge.evaluation).

    `uri`: a local checkpoint / fine-tune output dir, ``models:/<name>@<alias>``,
    ``models:/<name>/<version>`` or ``runs:/<run_id>/<path>``. `tracking_uri` defaults to
    the embedded ``sqlite:///<workdir>/mlflow.db``. The report gains ``model_uri``,
    ``model_dir`` and ``report_dir``.
    """
    workdir = Path(workdir)
    if is_mlflow_uri(uri):
        directory = fetch(uri, workdir, tracking_uri or default_tracking_uri(workdir))
    else:
        directory = check_model_dir(Path(uri).expanduser().resolve(), uri)
    model = Artifact(stage="model", fingerprint=content_fingerprint(directory), path=str(directory))
    log.info("evaluating %s (%s, content %s)", uri, directory, model.fingerprint)
    result = evaluate_checkpoint(cfg, model, workdir=workdir, sink=sink)
    report = json.loads(result.file(REPORT).read_text())
    return report | {"model_uri": uri, "model_dir": str(directory), "report_dir": result.path}
