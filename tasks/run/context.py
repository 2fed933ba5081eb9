"""What every stage of one pipeline run shares: where it writes and where it is tracked."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class PruneLink(BaseModel):
    """The Optuna trial a sweep trial's pre-training reports to, so a hopeless one stops early.

    ``sign`` turns the metric into the study's sense of better: -1 for a loss under a
    maximised objective. The pruner's settings travel here because Optuna keeps the pruner
    on the study object, not in its storage.
    """

    model_config = ConfigDict(frozen=True)

    storage: str
    study_name: str
    trial_number: int
    stage: str = "pretrain"
    metric: str = "val_loss"
    sign: float = -1.0
    startup_trials: int = 2
    warmup_steps: int = 0


class RunLink(BaseModel):
    """Where a pipeline run hangs in MLflow when another run drives it (a sweep's trials)."""

    model_config = ConfigDict(frozen=True)

    parent_run_id: str
    name: str
    tags: dict[str, str] = {}
    pruning: PruneLink | None = None  # a sweep trial whose pre-training may be pruned


class StageContext(BaseModel):
    """Where a pipeline run writes and tracks; the same for every stage of one run."""

    model_config = ConfigDict(frozen=True)

    workdir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    pruning: PruneLink | None = None  # set for a sweep trial (its link's), read by the stage contract

    @property
    def path(self) -> Path:
        return Path(self.workdir)
