"""The seam through which metrics leave training code.

Engine and stage code only see this protocol; ``registry`` provides the MLflow
implementation and tests use :class:`MemorySink`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class MetricSink(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics at a training step (or step 0 for one-off figures)."""

    def progress(self, done: int, total: int) -> None:
        """Report progress of a long loop (shown in the Prefect UI when available)."""


@dataclass
class MemorySink:
    """Keeps every logged value in memory: for tests and for pure-function callers."""

    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    last_progress: tuple[int, int] | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.history.append((step, {k: float(v) for k, v in metrics.items()}))

    def progress(self, done: int, total: int) -> None:
        self.last_progress = (done, total)

    def series(self, name: str) -> list[tuple[int, float]]:
        """All (step, value) pairs logged under ``name``."""
        return [(s, m[name]) for s, m in self.history if name in m]


class PrefixedSink:
    """Forwards to `sink` with every metric name prefixed: runs of one stage stay apart in MLflow."""

    def __init__(self, sink: MetricSink, prefix: str) -> None:
        self.sink, self.prefix = sink, prefix

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.sink.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step)

    def progress(self, done: int, total: int) -> None:
        self.sink.progress(done, total)


class NullSink:
    """Drops everything."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        return None

    def progress(self, done: int, total: int) -> None:
        return None
