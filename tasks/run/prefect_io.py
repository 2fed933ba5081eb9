"""What stages show in Prefect: progress, a summary per stage, a link to its MLflow run.

Everything here is a no-op outside a Prefect run, so pure functions and tests never
need a Prefect context.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.objects import State
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError

from tasks.run.context import StageContext
from tasks.store.artifact import Artifact

TRANSIENT_ERRORS = (ConnectionError, TimeoutError)


def retry_on_io(task: object, task_run: object, state: State) -> bool:
    """Prefect retry condition: retry network/time-out failures only, never bad input."""
    return isinstance(state.result(raise_on_failure=False), TRANSIENT_ERRORS)


def inline_pngs(paths: Sequence[Path]) -> str:
    """Markdown images with the PNGs inline (data URIs): a Prefect artifact cannot point at local files."""
    return "\n\n".join(
        f"![{p.stem}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})" for p in paths
    )


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def in_prefect_run() -> bool:
    try:
        get_run_context()
    except MissingContextError:
        return False
    return True


class PrefectProgress:
    """Mirrors ``progress`` into a Prefect progress artifact (only inside a Prefect run)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.artifact_id = None
        self.last_pct = -1.0

    def update(self, done: int, total: int) -> None:
        pct = round(100.0 * done / max(total, 1), 0)
        if pct == self.last_pct or not in_prefect_run():
            return
        self.last_pct = pct
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(pct, key=artifact_key(f"{self.stage}-progress"))
        else:
            update_progress_artifact(self.artifact_id, pct)


def summary_markdown(stage: str, artifact: Artifact, run_id: str) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(artifact.summary.items()))
    cached = f" (reused from run `{artifact.producer_run_id}`)" if artifact.cached else ""
    return (
        f"# {stage}\n\nArtifact `{artifact.path}`{cached}\n\n"
        f"fingerprint `{artifact.fingerprint}` · MLflow run `{run_id}`\n\n"
        f"| field | value |\n|---|---|\n{rows}\n"
    )


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI when tracking goes to a server (None for a local store)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def publish_stage_summary(ctx: StageContext, name: str, artifact: Artifact, run_id: str) -> None:
    """Prefect artifacts for a stage: a markdown summary and, with an MLflow server, a link."""
    if not in_prefect_run():
        return
    create_markdown_artifact(
        summary_markdown(name, artifact, run_id),
        key=artifact_key(f"{name}-summary"),
        description=f"{name} stage summary",
    )
    url = mlflow_run_url(ctx.tracking_uri, ctx.experiment_id, run_id)
    if url:
        create_link_artifact(url, link_text=f"MLflow run of {name}", key=artifact_key(f"{name}-mlflow"))
