"""Artifact handles: what stages pass each other instead of tensors or datasets.

A handle is small and frozen (directory + fingerprint + summary), so Prefect can persist
it cheaply; the data stays on disk in the directory the handle names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

MANIFEST = "manifest.json"


class Artifact(BaseModel):
    """A finished stage output: where it is, what identifies it, what it holds."""

    model_config = ConfigDict(frozen=True)

    stage: str
    fingerprint: str
    path: str
    inputs: tuple[str, ...] = ()
    summary: dict[str, Any] = {}
    producer_run_id: str | None = None
    cached: bool = False

    @property
    def dir(self) -> Path:
        return Path(self.path)

    def file(self, name: str) -> Path:
        """Path of a file inside the artifact directory."""
        return Path(self.path) / name


def load_artifact(path: Path) -> Artifact:
    """The handle of a finished artifact directory, read from its manifest (marked ``cached``)."""
    data = json.loads((path / MANIFEST).read_text())
    return Artifact(
        stage=data["stage"],
        fingerprint=data["fingerprint"],
        path=str(path),
        inputs=tuple(data.get("inputs", ())),
        summary=data.get("summary", {}),
        producer_run_id=data.get("producer_run_id"),
        cached=True,
    )
