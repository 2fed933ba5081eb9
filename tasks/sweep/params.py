"""Flat, typed parameters of the sweep deployment: what its run form in the Prefect UI shows."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tasks.run.params import PresetName


class SweepParameters(BaseModel):
    """One deployed sweep: preset, search space, trial count and parallelism (each a form field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: PresetName = Field("tiny", description="Preset in deployments/presets the trials start from.")
    workdir: str = Field(
        min_length=1, description="Working directory: trials reuse each other's stages here."
    )
    space: str = Field(
        "finetune-lr-batch",
        min_length=1,
        description="Search space: a shipped one in deployments/spaces (by name) or a .toml path.",
    )
    trials: int = Field(
        6, ge=1, le=10_000, description="COMPLETE trials to reach (a resumed sweep counts its own)."
    )
    parallel: int = Field(
        1, ge=1, le=64, description="Trials run at once (threads of Prefect's task runner)."
    )
    storage: str | None = Field(
        None, description="Optuna storage URL (e.g. postgresql://...); empty: SQLite in the workdir."
    )
    overrides: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Preset overrides as section.field=value (TOML values).",
    )
