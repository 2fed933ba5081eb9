"""Stage directories: content addressing, reuse, atomicity."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from tasks.store.artifact import MANIFEST, build_stage, fingerprint, load_artifact


class Cfg(BaseModel):
    model_config = ConfigDict(frozen=True)
    n: int = 1


def write_n(n: int):
    def build(out: Path) -> dict:
        (out / "data.txt").write_text("x" * n)
        return {"n": n}

    return build


def test_build_then_reuse(tmp_path: Path) -> None:
    calls = []

    def build(out: Path) -> dict:
        calls.append(out)
        return write_n(3)(out)

    first = build_stage(workdir=tmp_path, stage="s", version="1", config=Cfg(n=3), inputs=[], build=build)
    again = build_stage(workdir=tmp_path, stage="s", version="1", config=Cfg(n=3), inputs=[], build=build)
    assert len(calls) == 1
    assert not first.cached and again.cached
    assert first.path == again.path and first.fingerprint == again.fingerprint
    assert first.file("data.txt").read_text() == "xxx"
    assert again.summary == {"n": 3}


def test_fingerprint_depends_on_config_version_inputs_and_source(tmp_path: Path) -> None:
    up = build_stage(workdir=tmp_path, stage="up", version="1", config=Cfg(), inputs=[], build=write_n(1))
    base = fingerprint("s", "1", Cfg(n=1), [up])
    assert fingerprint("s", "1", Cfg(n=2), [up]) != base
    assert fingerprint("s", "2", Cfg(n=1), [up]) != base
    assert fingerprint("s", "1", Cfg(n=1), []) != base
    assert fingerprint("s", "1", Cfg(n=1), [up], source_key="files-v2") != base
    assert fingerprint("s", "1", Cfg(n=1), [up]) == base


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(out: Path) -> dict:
        (out / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_stage(workdir=tmp_path, stage="s", version="1", config=Cfg(), inputs=[], build=broken)
    assert list((tmp_path / "s").iterdir()) == []


def test_directory_without_manifest_is_rebuilt(tmp_path: Path) -> None:
    fp = fingerprint("s", "1", Cfg(), [])
    stale = tmp_path / "s" / fp
    stale.mkdir(parents=True)
    (stale / "junk").write_text("left by a crash")
    art = build_stage(workdir=tmp_path, stage="s", version="1", config=Cfg(), inputs=[], build=write_n(2))
    assert not (stale / "junk").exists()
    assert (stale / MANIFEST).is_file()
    assert load_artifact(stale).summary == {"n": 2} == art.summary
