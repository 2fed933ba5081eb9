"""The manifest of a finished stage directory: every file's size and sha256, checked before reuse.

A stage directory is reused only when its manifest lists exactly the files on disk with
the same sizes and contents. A truncated, altered, missing or extra file makes it
damaged, and a damaged artifact is rebuilt, never reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.store.artifact import MANIFEST
from tasks.store.digest import json_digest, sha256_file
from tasks.store.ownership import OWNER_MARK

NOT_CONTENT = frozenset({MANIFEST, OWNER_MARK})  # bookkeeping files, not part of the artifact


def file_table(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every artifact file under ``directory``."""
    table = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel not in NOT_CONTENT:
            table[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return table


def content_digest(directory: Path) -> str:
    """Digest of what an artifact holds: its manifest's file table (sizes + sha256 of every file).

    Why: a downstream stage's fingerprint must change when its input's bytes do, not only when
    the input's own key does. A damaged artifact is rebuilt under the same fingerprint, and a
    rebuild is not always byte-identical (Unigram tokenizers, time-budgeted pre-training), so a
    key made of input fingerprints alone would reuse work done on the old bytes. A directory
    without a readable manifest is hashed file by file here.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: input artifact directory not found")
    manifest = read_manifest(directory)
    files = manifest.get("files") if manifest else None
    table = files if isinstance(files, dict) else file_table(directory)
    return json_digest(table, length=64)


def write_manifest(directory: Path, record: dict[str, Any]) -> None:
    """manifest.json = ``record`` + the file table of ``directory`` (written last: the commit mark)."""
    payload = {**record, "files": file_table(directory)}
    (directory / MANIFEST).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``, or None when it has none (never finished)."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"files": None}  # unreadable: verify() reports it


def verify(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """Every way ``directory`` differs from its manifest (empty: intact)."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        return [f"{MANIFEST}: unreadable or without a file table"]
    problems = []
    for rel, expected in sorted(files.items()):
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{rel}: {path.stat().st_size} bytes, manifest says {expected['size']}")
        elif sha256_file(path) != expected["sha256"]:
            problems.append(f"{rel}: content differs from the manifest's sha256")
    on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    problems.extend(f"{rel}: not in the manifest" for rel in sorted(on_disk - set(files) - NOT_CONTENT))
    return problems
