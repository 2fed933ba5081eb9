"""SIGTERM during training: checkpoint, then stop with the signal's exit status.

A preempted node, ``kill`` or Prefect cancelling a run sends SIGTERM. ``fit()`` records it
instead of dying mid-step, checkpoints between steps and raises ``TrainingInterrupted``: a
``SystemExit`` with status 143 (128 + SIGTERM), so an uncaught one ends the process the way
SIGTERM would and the tracking code marks the run KILLED.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class TrainingInterrupted(SystemExit):
    """SIGTERM arrived; the run checkpointed at ``step`` and stopped (exit status 128 + signal)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + signum)
        self.step = step

    def __str__(self) -> str:
        return f"training interrupted by signal at step {self.step} (checkpoint saved)"


@contextmanager
def termination_signals() -> Iterator[list[int]]:
    """Record SIGTERM in the returned list instead of dying; the loop checks it between steps.

    Signal handlers can only be installed from the main thread; elsewhere (e.g. a Prefect task in
    a worker thread) SIGTERM keeps its previous behaviour and a warning says so.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        log.warning("fit() runs outside the main thread: SIGTERM will not trigger a final checkpoint")
        yield received
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)
