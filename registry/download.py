"""Fetch a model's files from MLflow into a local directory.

Accepted URIs: ``models:/<name>@<alias>``, ``models:/<name>/<version>`` (registry) and
``runs:/<run_id>/<path>`` (a run's artifacts). A registry URI is resolved with an
explicit ``MlflowClient`` to the version's ``source`` (the run artifact location the
register stage logged the checkpoint to), and that source is downloaded, so nothing
depends on MLflow's process-global tracking / registry URI settings.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from registry.model_registry import alias_version, is_not_found
from registry.tracking import Tracker

MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
RUNS = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")


class ModelUriError(ValueError):
    """A model URI that is malformed or names nothing in the registry / tracking store."""


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/"))


def resolve_source(uri: str, tracking_uri: str) -> str:
    """The artifact URI holding the files of `uri` (a registry version's source, or the runs:/ URI)."""
    if RUNS.match(uri):
        return uri
    tracker = Tracker(tracking_uri)
    if match := MODELS_ALIAS.match(uri):
        name, number = match["name"], alias_version(tracker, match["name"], match["alias"])
        if number is None:
            alias = match["alias"]
            raise ModelUriError(f"{uri!r}: no version of {name!r} holds alias {alias!r} at {tracking_uri}")
    elif match := MODELS_VERSION.match(uri):
        name, number = match["name"], match["version"]
    else:
        raise ModelUriError(
            f"{uri!r}: expected models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>"
        )
    try:
        return tracker.client.get_model_version(name, number).source
    except MlflowException as err:
        if not is_not_found(err):
            raise
        raise ModelUriError(f"{uri!r}: not found in the registry at {tracking_uri} ({err.message})") from err


def download_model(uri: str, tracking_uri: str, dst: Path) -> Path:
    """Download the files behind `uri` into `dst` (created) and return the local model directory."""
    source = resolve_source(uri, tracking_uri)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri)
    except MlflowException as err:
        raise ModelUriError(f"{uri!r}: could not download {source!r} ({err.message})") from err
    return Path(local)
