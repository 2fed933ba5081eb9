"""Model registry: versions, the ``challenger`` / ``champion`` aliases and the promotion gate.

Aliases, not the deprecated stages. The gate compares like with like: a score is a gate
metric measured on an evaluation *suite* (tasks, dev-file contents, caps, scoring code;
see ``tasks.judge.evaluation.suite``), stored on the version as the tag
``bertflow.score.<metric>.<suite>``. When the champion has no score on the challenger's
suite, the gate has it re-scored on that suite first (``rescore``, supplied by the
caller) and records that score on the champion too. Every decision and its numbers are
tagged on the challenger's version, so promotions can be audited in the MLflow UI.

Registry errors are errors: only "this model / alias does not exist" is read as an
answer; anything else (a server down, a permission problem) propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from registry.tracking import Tracker

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
SUITE_TAG = "bertflow.suite"
ATTEMPT_TAG = "bertflow.register_fingerprint"  # which register build created a version
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


class UnknownVersionError(ValueError):
    """A registered model name or version that does not exist."""


class NotComparableError(ValueError):
    """The champion cannot be scored on the challenger's suite (e.g. it has no head for a task)."""


@dataclass(frozen=True)
class Score:
    """A gate metric's value on one evaluation suite."""

    metric: str
    value: float
    suite: str  # suite fingerprint

    @property
    def tag(self) -> str:
        return score_tag(self.metric, self.suite)


def score_tag(metric: str, suite: str) -> str:
    return f"bertflow.score.{metric}.{suite}"


Rescore = Callable[[str], float]  # champion version -> its metric on the challenger's suite


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    champion_version: str | None = None
    champion_score: float | None = None
    champion_rescored: bool = False


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    score: Score
    baseline_score: float | None
    decision: Decision


def is_not_found(err: MlflowException) -> bool:
    return err.error_code == NOT_FOUND


def ensure_registered_model(tracker: Tracker, name: str, description: str = "") -> None:
    try:
        tracker.client.get_registered_model(name)
    except MlflowException as err:
        if not is_not_found(err):
            raise
        tracker.client.create_registered_model(name, description=description)


def alias_version(tracker: Tracker, name: str, alias: str) -> str | None:
    """The version holding ``alias`` (None when the model or the alias does not exist)."""
    try:
        model = tracker.client.get_registered_model(name)
    except MlflowException as err:
        if is_not_found(err):
            return None
        raise
    version = (model.aliases or {}).get(alias)
    return str(version) if version is not None else None


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as ``bertflow status`` lists it."""

    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    created_ms: int


def model_versions(tracker: Tracker, name: str) -> list[VersionInfo]:
    """Every version of ``name``, oldest first, with its aliases ([] when the model does not exist)."""
    try:
        model = tracker.client.get_registered_model(name)
    except MlflowException as err:
        if is_not_found(err):
            return []
        raise
    held: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        held.setdefault(str(version), []).append(alias)
    found = tracker.client.search_model_versions(f"name = '{name}'")  # results carry no aliases
    versions = []
    for mv in sorted(found, key=lambda mv: int(mv.version)):
        number = str(mv.version)
        aliases = tuple(sorted(held.get(number, ())))
        versions.append(VersionInfo(number, aliases, mv.run_id, mv.creation_timestamp))
    return versions


def version_tags(tracker: Tracker, name: str, version: str) -> dict[str, str]:
    return dict(tracker.client.get_model_version(name, version).tags)


def register_version(
    tracker: Tracker, *, name: str, source_run_id: str, artifact_path: str, tags: Mapping[str, str]
) -> str:
    """Create a model version from the files a run logged under ``artifact_path``."""
    ensure_registered_model(tracker, name, "BERT-style encoder with task heads, trained by bertflow")
    source = f"{tracker.artifact_uri(source_run_id)}/{artifact_path}"
    mv = tracker.client.create_model_version(
        name, source=source, run_id=source_run_id, tags={k: str(v) for k, v in tags.items()}
    )
    return str(mv.version)


def check_version(tracker: Tracker, name: str, version: str) -> None:
    """Raise naming the model and version when the registry does not hold them."""
    try:
        tracker.client.get_model_version(name, version)
    except MlflowException as err:
        if not is_not_found(err):
            raise
        where = tracker.tracking_uri
        raise UnknownVersionError(f"{name} v{version}: not in the registry at {where}") from err


def promote(tracker: Tracker, name: str, version: str, reason: str) -> None:
    """Give ``version`` the champion alias and record why on the version."""
    tracker.client.set_registered_model_alias(name, CHAMPION, version)
    tracker.client.set_model_version_tag(name, version, "promotion_reason", reason)


def champion_score(tracker: Tracker, name: str, version: str, score: Score, rescore: Rescore) -> float:
    """The champion's metric on ``score``'s suite: from its tags, else re-scored (and then tagged)."""
    known = version_tags(tracker, name, version).get(score.tag)
    if known is not None:
        return float(known)
    value = float(rescore(version))
    tracker.client.set_model_version_tag(name, version, score.tag, f"{value:.6f}")
    return value


def gate(
    tracker: Tracker,
    name: str,
    score: Score,
    *,
    baseline_score: float | None,
    min_improvement: float,
    rescore: Rescore,
) -> Decision:
    """Should the challenger with ``score`` become champion? Compares only scores of one suite."""
    m = score.metric
    if baseline_score is not None and not score.value > baseline_score:
        return Decision(False, f"{m} {score.value:.3f} does not beat its own random-init baseline "
                               f"({baseline_score:.3f})")  # fmt: skip
    current = alias_version(tracker, name, CHAMPION)
    if current is None:
        return Decision(True, f"first champion ({m}={score.value:.3f})")
    rescored = score.tag not in version_tags(tracker, name, current)
    try:
        theirs = champion_score(tracker, name, current, score, rescore)
    except NotComparableError as err:
        return Decision(False, f"champion v{current} cannot be scored on this suite ({err}); "
                               "promote by hand (`bertflow promote`) if intended", current)  # fmt: skip
    how = f"re-scored on this suite: {theirs:.3f}" if rescored else f"{theirs:.3f}"
    wins = score.value > theirs + min_improvement
    verb = "beats" if wins else "does not beat"
    reason = f"{m} {score.value:.3f} {verb} champion v{current} ({how})"
    return Decision(wins, reason, current, theirs, rescored)


def attempt_version(tracker: Tracker, name: str, attempt: str) -> str | None:
    """The version an earlier, interrupted attempt of the same register build created (None if none)."""
    found = tracker.client.search_model_versions(f"name = '{name}' and tags.`{ATTEMPT_TAG}` = '{attempt}'")
    return str(max(int(mv.version) for mv in found)) if found else None


def recorded_decision(tracker: Tracker, name: str, version: str) -> Decision | None:
    """The gate's decision already tagged on ``version`` (an attempt killed after gating), or None.

    None also when the attempt was killed while writing the tags: ``bertflow.gate.promoted`` is
    written last (`decision_tags`), so without it the decision is made again and rewritten.
    """
    tags = version_tags(tracker, name, version)
    if "bertflow.gate.promoted" not in tags:
        return None
    champion_score = tags.get("bertflow.gate.champion_score")
    return Decision(
        tags["bertflow.gate.promoted"] == "True",
        tags["bertflow.gate.reason"],
        tags.get("bertflow.gate.champion_version"),
        float(champion_score) if champion_score is not None else None,
    )


def decision_tags(decision: Decision, baseline_score: float | None) -> dict[str, str]:
    """The gate's tags in the order they must be written: ``bertflow.gate.promoted`` LAST.

    MLflow sets one tag per call, so a kill can land between two of them; `recorded_decision`
    trusts a decision only when that final tag is there, which then means all the others are.
    """
    tags = {"bertflow.gate.reason": decision.reason}
    if decision.champion_version is not None:
        tags["bertflow.gate.champion_version"] = decision.champion_version
    if decision.champion_score is not None:
        tags["bertflow.gate.champion_score"] = f"{decision.champion_score:.6f}"
    if baseline_score is not None:
        tags["bertflow.gate.baseline_score"] = f"{baseline_score:.6f}"
    tags["bertflow.gate.promoted"] = str(decision.promoted)
    return tags


def register_and_gate(
    tracker: Tracker,
    *,
    name: str,
    source_run_id: str,
    artifact_path: str,
    score: Score,
    min_improvement: float,
    tags: Mapping[str, str],
    baseline_score: float | None = None,
    rescore: Rescore,
    attempt: str = "",
) -> Registration:
    """Register a version as ``challenger``; make it ``champion`` if the gate says so.

    ``attempt`` identifies the register build (its fingerprint): a build killed after
    creating its version is finished by the next attempt instead of registering a duplicate.
    """
    version = attempt_version(tracker, name, attempt) if attempt else None
    if version is None:
        own = {**tags, SUITE_TAG: score.suite, score.tag: f"{score.value:.6f}", ATTEMPT_TAG: attempt}
        version = register_version(
            tracker, name=name, source_run_id=source_run_id, artifact_path=artifact_path, tags=own
        )
    else:
        log.warning("%s v%s was registered by an interrupted attempt of this build: finishing it",
                    name, version)  # fmt: skip
    tracker.client.set_registered_model_alias(name, CHALLENGER, version)
    decision = recorded_decision(tracker, name, version)
    if decision is None and alias_version(tracker, name, CHAMPION) == version:  # killed right after promoting
        decision = Decision(True, version_tags(tracker, name, version).get("promotion_reason", "promoted"))
    if decision is None:
        decision = gate(tracker, name, score, baseline_score=baseline_score,
                        min_improvement=min_improvement, rescore=rescore)  # fmt: skip
        for key, value in decision_tags(decision, baseline_score).items():
            tracker.client.set_model_version_tag(name, version, key, value)
    if decision.promoted:
        promote(tracker, name, version, decision.reason)
    log.info("registered %s v%s: %s", name, version, decision.reason)
    return Registration(name, version, score, baseline_score, decision)
