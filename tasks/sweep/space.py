"""A sweep's search space, read from TOML and checked against the preset before any trial runs.

    [sweep]
    metric = "glue_avg"        # a number of the evaluation summary: glue_avg, SST-2/accuracy, SQuAD/f1
    direction = "maximize"
    sampler = "grid"           # grid: every combination of the lists; tpe: Optuna's TPE
    seed = 0
    selection_size = 200       # train examples held out per task and scored as the objective

    [params]
    "finetune.train.lr" = [1e-4, 3e-4]            # a list: grid values (categorical under TPE)
    "finetune.batch_size" = {choice = [16, 32]}   # the same as a list
    "pretrain.train.lr" = {log_range = [1e-4, 1e-3]}
    "pretrain.mask_prob" = {range = [0.1, 0.3]}   # ints on both ends: an integer range; step = ...

    [pruning]                  # optional: stop a trial whose pre-training falls behind
    metric = "val_loss"        # a pre-training evaluation figure, lower is better
    startup_trials = 2         # trials that always run to the end first
    warmup_steps = 0           # pre-training steps before a trial can be pruned

A parameter is any ``section.field`` of the pipeline config, quoted or as nested tables.
Every error names the file, the key and, where it can be found, the line.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from tasks.downstream.selection import SelectionSplit
from tasks.downstream.tasks import TASKS
from tasks.run.config import PipelineConfig, PresetError, load_config
from tasks.store.digest import json_digest

Scalar = bool | int | float | str
RANGE_KEYS = frozenset({"range", "log_range", "choice", "step"})
# what the sweep itself sets on every trial: a space must not move them
SWEEP_OWNED = (
    "finetune.hold_out",
    "evaluate.split",
    "evaluate.selection",
    "registry",
    "baseline_random_init",
)


DEFAULT_SELECTION = SelectionSplit()
PRUNE_METRICS = ("val_loss", "val_perplexity")  # pre-training figures where lower is better
SPACES = resources.files("deployments") / "spaces"


class SpaceError(ValueError):
    """A search space that cannot be swept (raised before any trial starts)."""


def resolve_space(name_or_path: str) -> Path:
    """A search-space file: a path, else the name of one shipped in ``deployments/spaces``."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SpaceError(f"{path}: no such search-space file")
        return path
    shipped = SPACES / f"{name_or_path}.toml"
    if shipped.is_file():
        return Path(str(shipped))
    names = sorted(p.name.removesuffix(".toml") for p in SPACES.iterdir() if p.name.endswith(".toml"))
    raise SpaceError(f"unknown search space {name_or_path!r}: not a file, nor one of {names}")


@dataclass(frozen=True)
class Param:
    """One dimension: a list of values (grid/categorical) or a numeric range."""

    path: str
    values: tuple[Scalar, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_range(self) -> bool:
        return self.low is not None

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def probes(self) -> tuple[Scalar, ...]:
        """Values that stand for the dimension when checking it: every list value, a range's two ends."""
        return self.values if not self.is_range else (self.low, self.high)  # type: ignore[return-value]


@dataclass(frozen=True)
class Pruning:
    """Median pruning of pre-training (Optuna's MedianPruner) on a validation figure."""

    metric: str = "val_loss"
    startup_trials: int = 2
    warmup_steps: int = 0


@dataclass(frozen=True)
class SearchSpace:
    source: str
    params: tuple[Param, ...]
    metric: str = "glue_avg"
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["grid", "tpe"] = "grid"
    seed: int = 0
    selection: SelectionSplit = DEFAULT_SELECTION
    pruning: Pruning | None = None

    def grid(self) -> dict[str, list[Scalar]]:
        return {p.path: list(p.values) for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params)

    def identity(self) -> dict[str, Any]:
        """What makes two sweeps the same study (the space's own terms, not where its file lies)."""
        return {
            "params": [p.__dict__ for p in self.params], "metric": self.metric, "direction": self.direction,
            "sampler": self.sampler, "seed": self.seed, "selection": self.selection.model_dump(),
            **({"pruning": self.pruning.__dict__} if self.pruning else {}),
        }  # fmt: skip

    def digest(self) -> str:
        return json_digest(self.identity())


def _line_of(text: str, key: str) -> str:
    """`` (line N)`` of the first line that mentions the key's last part, or "" if none does."""
    leaf = key.rsplit(".", 1)[-1]
    for number, line in enumerate(text.splitlines(), start=1):
        if leaf in line and not line.lstrip().startswith("#"):
            return f" (line {number})"
    return ""


def _leaves(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted path, spec)`` of every parameter; a table whose keys are range words is a spec."""
    out = []
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not set(value) <= RANGE_KEYS:
            out += _leaves(value, f"{path}.")
        else:
            out.append((path, value))
    return out


def _is_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)


def parse_param(path: str, spec: Any, where: str) -> Param:
    """One ``[params]`` entry -> Param (``where`` names file, key and line in errors)."""
    if isinstance(spec, list) or (isinstance(spec, dict) and set(spec) == {"choice"}):
        values = spec if isinstance(spec, list) else spec["choice"]
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: an empty list of values")
        if not all(_is_scalar(v) for v in values):
            raise SpaceError(f"{where}: values must be numbers, strings or booleans, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise SpaceError(f"{where}: a value is listed twice: {values!r}")
        return Param(path, values=tuple(values))
    if isinstance(spec, dict) and len({"range", "log_range"} & set(spec)) == 1 and "choice" not in spec:
        log = "log_range" in spec
        bounds = spec["log_range" if log else "range"]
        numeric = all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds or [])
        if not isinstance(bounds, list) or len(bounds) != 2 or not numeric:
            raise SpaceError(f"{where}: a range is [low, high] of two numbers, got {bounds!r}")
        low, high = bounds
        if not low < high:
            raise SpaceError(f"{where}: an empty range [{low}, {high}] (low must be below high)")
        if log and low <= 0:
            raise SpaceError(f"{where}: a log_range needs low > 0, got {low}")
        step = spec.get("step")
        if step is not None and (not isinstance(step, int | float) or step <= 0 or log):
            raise SpaceError(f"{where}: step must be a positive number, and not on a log_range")
        return Param(path, low=low, high=high, log=log, step=step)
    raise SpaceError(
        f"{where}: expected a list of values, {{choice = [...]}}, {{range = [lo, hi]}} or "
        f"{{log_range = [lo, hi]}}, got {spec!r}"
    )


def read_space(path: Path) -> SearchSpace:
    """Parse SPACE.toml (syntax and shapes only; `check_space` tests it against the preset)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read the search space: {exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{path}: invalid TOML: {exc}") from exc
    unknown = set(raw) - {"sweep", "params", "pruning"}
    if unknown:
        raise SpaceError(
            f"{path}: unknown table(s) {sorted(unknown)}; a space has [sweep], [params] and maybe [pruning]"
        )
    params = tuple(
        parse_param(key, spec, f"{path}: params.{key}{_line_of(text, key)}")
        for key, spec in _leaves(raw.get("params", {}))
    )
    if not params:
        raise SpaceError(f"{path}: [params] is empty: nothing to sweep")
    settings = dict(raw.get("sweep", {}))
    selection = {k: settings.pop(f"selection_{k}") for k in ("size", "seed") if f"selection_{k}" in settings}
    try:
        space = SearchSpace(
            source=str(path), params=params, selection=SelectionSplit(**selection),
            pruning=read_pruning(raw["pruning"], f"{path}: [pruning]{_line_of(text, '[pruning]')}")
            if "pruning" in raw else None,
            **settings,
        )  # fmt: skip
    except (TypeError, ValidationError) as exc:
        raise SpaceError(f"{path}: [sweep]: {exc}") from exc
    if space.direction not in ("maximize", "minimize") or space.sampler not in ("grid", "tpe"):
        raise SpaceError(f"{path}: [sweep]: direction is maximize|minimize, sampler is grid|tpe")
    if space.sampler == "grid" and any(p.is_range for p in params):
        ranges = [p.path for p in params if p.is_range]
        raise SpaceError(
            f"{path}: the grid sampler needs a list of values for every parameter; ranges: {ranges}"
        )
    return space


def read_pruning(table: Any, where: str) -> Pruning:
    """The ``[pruning]`` table: known keys, a lower-is-better figure, counts that are not negative."""
    if not isinstance(table, dict):
        raise SpaceError(f"{where}: expected a table")
    known = list(Pruning.__dataclass_fields__)
    if unknown := set(table) - set(known):
        raise SpaceError(f"{where}: unknown key(s) {sorted(unknown)}; known: {known}")
    pruning = Pruning(**table)
    if pruning.metric not in PRUNE_METRICS:
        raise SpaceError(f"{where}: metric {pruning.metric!r}: prune on one of {list(PRUNE_METRICS)}")
    for key in ("startup_trials", "warmup_steps"):
        value = getattr(pruning, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpaceError(f"{where}: {key} must be an integer >= 0, got {value!r}")
    return pruning


def check_pruning(space: SearchSpace, config: PipelineConfig) -> None:
    """Pruning needs trials whose pre-training differs and reports before its end."""
    if space.pruning is None:
        return
    if not any(p.path.startswith("pretrain.") for p in space.params):
        raise SpaceError(
            f"{space.source}: [pruning]: no dimension is under pretrain.*, so every trial shares one "
            "pre-training and there is nothing to prune"
        )
    if config.pretrain.train.eval_every <= 0:
        raise SpaceError(
            f"{space.source}: [pruning]: pretrain.train.eval_every is 0 in the preset, so pre-training "
            "reports only at its end; set it (e.g. --set pretrain.train.eval_every=200)"
        )


def check_metric(space: SearchSpace, config: PipelineConfig) -> None:
    """The objective must be a number the trials' evaluation reports."""
    tasks = config.evaluate.tasks
    metric = space.metric
    if metric in ("glue_avg", "glue_avg_with_wnli"):
        if not any(TASKS[t].is_glue for t in tasks):
            raise SpaceError(f"{space.source}: sweep.metric {metric!r}: no GLUE task among {list(tasks)}")
        return
    task, _, name = metric.partition("/")
    if task not in tasks or name not in TASKS[task].metrics:
        known = ["glue_avg", *(f"{t}/{m}" for t in tasks for m in TASKS[t].metrics)]
        raise SpaceError(f"{space.source}: sweep.metric {metric!r} is not reported; one of {known}")


def check_space(
    space: SearchSpace, preset: str, workdir: Path, overrides: Sequence[str] = ()
) -> PipelineConfig:
    """Every value of every dimension builds a valid config that differs from the preset's.

    Returns the preset's config (with ``overrides``). Raises SpaceError naming the
    dimension: an unknown field, a value its field rejects, a field the sweep sets itself or
    an override sets too (which would silently win), or a dimension that changes nothing.
    """
    base = load_config(preset, workdir, overrides)
    text = Path(space.source).read_text(encoding="utf-8")
    overridden = {o.partition("=")[0].strip() for o in overrides}
    for param in space.params:
        where = f"{space.source}: params.{param.path}{_line_of(text, param.path)}"
        if param.path in overridden:
            raise SpaceError(f"{where}: also set by --set {param.path}=...; a dimension or an override")
        if param.path.startswith(SWEEP_OWNED):
            raise SpaceError(f"{where}: set by the sweep itself, not a dimension ({', '.join(SWEEP_OWNED)})")
        configs = []
        for value in param.probes():
            try:
                configs.append(load_config(preset, workdir, overrides, updates={param.path: value}))
            except (PresetError, ValidationError) as exc:
                raise SpaceError(f"{where}: value {value!r} is rejected: {exc}") from exc
        if all(c == base for c in configs):
            raise SpaceError(f"{where}: every value equals the preset's: this dimension changes nothing")
    check_metric(space, base)
    check_pruning(space, base)
    return base


def grid_points(space: SearchSpace) -> list[dict[str, Scalar]]:
    """Every combination of a grid space, in order (for tests and the table)."""
    names = [p.path for p in space.params]
    return [
        dict(zip(names, combo, strict=True)) for combo in itertools.product(*(p.values for p in space.params))
    ]
