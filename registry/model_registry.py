"""Model registry: versions, the ``challenger`` / ``champion`` aliases and the promotion gate.

Aliases, not the deprecated stages. The gate compares one score (the GLUE average by
default) recorded as a tag on each version, so promotion decisions can be read back and
audited in the MLflow UI.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from registry.tracking import Tracker

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    score: float
    champion_score: float | None
    promoted: bool
    reason: str


def ensure_registered_model(tracker: Tracker, name: str, description: str = "") -> None:
    try:
        tracker.client.get_registered_model(name)
    except MlflowException:
        tracker.client.create_registered_model(name, description=description)


def version_by_alias(tracker: Tracker, name: str, alias: str) -> tuple[str, dict[str, str]] | None:
    """(version, tags) of the version holding ``alias``, or None when no version holds it."""
    try:
        mv = tracker.client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return str(mv.version), dict(mv.tags)


def register_version(
    tracker: Tracker,
    *,
    name: str,
    source_run_id: str,
    artifact_path: str,
    tags: Mapping[str, str],
) -> str:
    """Create a model version from the files a run logged under ``artifact_path``."""
    ensure_registered_model(tracker, name, "BERT-style encoder with task heads, trained by bertflow")
    source = f"{tracker.artifact_uri(source_run_id)}/{artifact_path}"
    mv = tracker.client.create_model_version(
        name, source=source, run_id=source_run_id, tags={k: str(v) for k, v in tags.items()}
    )
    return str(mv.version)


class UnknownVersionError(ValueError):
    """A registered model name or version that does not exist."""


def check_version(tracker: Tracker, name: str, version: str) -> None:
    """Raise naming the model and version when the registry does not hold them."""
    try:
        tracker.client.get_model_version(name, version)
    except MlflowException as err:
        raise UnknownVersionError(
            f"{name} v{version}: not in the registry at {tracker.tracking_uri}"
        ) from err


def promote(tracker: Tracker, name: str, version: str, reason: str) -> None:
    """Give ``version`` the champion alias and record why on the version."""
    tracker.client.set_registered_model_alias(name, CHAMPION, version)
    tracker.client.set_model_version_tag(name, version, "promotion_reason", reason)


def register_and_gate(
    tracker: Tracker,
    *,
    name: str,
    source_run_id: str,
    artifact_path: str,
    metric: str,
    score: float,
    min_improvement: float,
    tags: Mapping[str, str],
) -> Registration:
    """Register a version as ``challenger``; make it ``champion`` if it beats the current one.

    The version becomes champion when there is no champion yet, or when its ``metric``
    exceeds the champion's by more than ``min_improvement``.
    """
    version = register_version(
        tracker,
        name=name,
        source_run_id=source_run_id,
        artifact_path=artifact_path,
        tags={**tags, metric: f"{score:.6f}"},
    )
    tracker.client.set_registered_model_alias(name, CHALLENGER, version)
    current = version_by_alias(tracker, name, CHAMPION)
    champion_score = float(current[1][metric]) if current and metric in current[1] else None
    if champion_score is None:
        promoted, reason = True, f"first champion ({metric}={score:.3f})"
    elif score > champion_score + min_improvement:
        promoted, reason = True, f"{metric} {score:.3f} beats champion v{current[0]} ({champion_score:.3f})"
    else:
        promoted = False
        reason = f"{metric} {score:.3f} does not beat champion v{current[0]} ({champion_score:.3f})"
    if promoted:
        promote(tracker, name, version, reason)
    log.info("registered %s v%s: %s", name, version, reason)
    return Registration(name, version, score, champion_score, promoted, reason)
