"""``bertflow promote``: move the ``champion`` alias by hand, with a recorded reason.

Uses ``registry.model_registry.promote``, the same call the pipeline's promotion gate
makes, so a manual promotion leaves exactly the record an automatic one does (the alias
plus a ``promotion_reason`` tag on the version).
"""

from __future__ import annotations

from registry.model_registry import CHAMPION, alias_version, check_version, promote
from registry.tracking import Tracker


def promote_version(tracking_uri: str, model: str, version: str, reason: str) -> str | None:
    """Make ``model`` v``version`` champion; returns the previous champion's version (None if none)."""
    if not reason.strip():
        raise ValueError("promote: --reason must say why (it is recorded on the version)")
    tracker = Tracker(tracking_uri)
    tracker.check_reachable()
    check_version(tracker, model, version)
    current = alias_version(tracker, model, CHAMPION)
    promote(tracker, model, version, f"manual: {reason.strip()}")
    return current
