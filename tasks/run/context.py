"""What every stage of one pipeline run shares: where it writes and where it is tracked."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class RunLink(BaseModel):
    """Where a pipeline run hangs in MLflow when another run drives it (a sweep's trials)."""

    model_config = ConfigDict(frozen=True)

    parent_run_id: str
    name: str
    tags: dict[str, str] = {}


class StageContext(BaseModel):
    """Where a pipeline run writes and tracks; the same for every stage of one run."""

    model_config = ConfigDict(frozen=True)

    workdir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    @property
    def path(self) -> Path:
        return Path(self.workdir)
