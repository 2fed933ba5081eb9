"""Build locks: two runs sharing a workdir never build the same artifact at once.

A lock per (stage, fingerprint), taken with ``flock`` around the check-reuse-build
sequence: the second run waits, then finds the first run's finished artifact and reuses
it. Nothing is corrupted, runs that need different artifacts proceed in parallel, and
the kernel releases a lock whose holder was killed (even by SIGKILL). The same kind of lock
serialises one-time set-up shared by runs, such as creating the workdir's MLflow store.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCKS_DIR = ".locks"


def build_lock(workdir: Path, stage: str, fp: str) -> AbstractContextManager[None]:
    """Hold the lock of building (stage, fingerprint) in ``workdir``."""
    return workdir_lock(workdir, f"{stage}-{fp}")


@contextmanager
def workdir_lock(workdir: Path, name: str) -> Iterator[None]:
    """Hold ``<workdir>/.locks/<name>.lock`` exclusively (waiting, with a log line, if taken)."""
    path = workdir / LOCKS_DIR / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            log.warning("%s: another process (%s) holds it; waiting", name, holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
