"""The stage contract's store: fingerprints that cover everything, verified reuse, atomic builds."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from tasks.store.artifact import MANIFEST
from tasks.store.digest import (
    SAMPLE_ABOVE,
    _code_digest,
    code_digest,
    import_closure,
    json_digest,
    sampled_file_digest,
)
from tasks.store.ownership import OWNER_MARK, ForeignDirectoryError
from tasks.store.stage import Job, Stage


class Cfg(BaseModel):
    model_config = ConfigDict(frozen=True)
    n: int = 1
    source: str = ""


CALLS: list[Path] = []


def build_n(cfg: Cfg, *inputs: object, out: Path, job: Job) -> dict:
    CALLS.append(out)
    (out / "data.txt").write_text("x" * cfg.n)
    (out / "sub").mkdir()
    (out / "sub" / "more.bin").write_bytes(bytes(range(cfg.n)))
    return {"n": cfg.n}


def reads_source(cfg: Cfg, workdir: Path) -> list[Path]:
    return [Path(cfg.source)] if cfg.source else []


STAGE = Stage("s", build_n, reads=reads_source)


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


def test_build_then_reuse(tmp_path: Path) -> None:
    first = STAGE(Cfg(n=3), workdir=tmp_path)
    again = STAGE(Cfg(n=3), workdir=tmp_path)
    assert len(CALLS) == 1
    assert not first.cached and again.cached
    assert first.path == again.path and first.fingerprint == again.fingerprint
    assert first.file("data.txt").read_text() == "xxx"
    assert again.summary == {"n": 3}
    manifest = json.loads(first.file(MANIFEST).read_text())
    assert set(manifest["files"]) == {"data.txt", "sub/more.bin"}
    assert manifest["files"]["data.txt"]["size"] == 3 and len(manifest["files"]["data.txt"]["sha256"]) == 64


def test_fingerprint_covers_config_inputs_files_destination(tmp_path: Path) -> None:
    source = tmp_path / "train.tsv"
    source.write_text("a\t1\n")
    up = STAGE(Cfg(n=1), workdir=tmp_path)

    def fp(cfg: Cfg, inputs: tuple = (up,), destination: str | None = None) -> dict:
        return STAGE.key(cfg, inputs, tmp_path, destination)

    base = fp(Cfg(n=1, source=str(source)))
    assert fp(Cfg(n=2, source=str(source))) != base
    assert fp(Cfg(n=1, source=str(source)), inputs=()) != base
    assert fp(Cfg(n=1, source=str(source)), destination="sqlite:///other.db") != base
    source.write_text("a\t0\n")  # same size, other label: the content is hashed, not the name
    assert fp(Cfg(n=1, source=str(source))) != base
    source.write_text("a\t1\n")
    assert fp(Cfg(n=1, source=str(source))) == base


def test_changed_input_file_rebuilds(tmp_path: Path) -> None:
    source = tmp_path / "train.tsv"
    source.write_text("label\t1\n")
    first = STAGE(Cfg(source=str(source)), workdir=tmp_path)
    source.write_text("label\t0\n")
    second = STAGE(Cfg(source=str(source)), workdir=tmp_path)
    assert len(CALLS) == 2 and first.fingerprint != second.fingerprint and not second.cached


DRAWS: list[int] = []


def build_drawn(cfg: Cfg, *inputs: object, out: Path, job: Job) -> dict:
    """A build that is not byte-identical when repeated (like a Unigram tokenizer or a timed run)."""
    DRAWS.append(len(DRAWS))
    (out / "drawn.txt").write_text(str(DRAWS[-1] // cfg.n))  # n=1: new bytes per build; n=99: the same
    return {}


def test_an_input_rebuilt_with_other_bytes_rebuilds_what_was_built_on_it(tmp_path: Path) -> None:
    upstream = Stage("up", build_drawn)
    for n, rebuilt_downstream in ((1, True), (99, False)):
        DRAWS.clear()
        work = tmp_path / str(n)
        first = STAGE(Cfg(), upstream(Cfg(n=n), workdir=work), workdir=work)
        (upstream(Cfg(n=n), workdir=work).dir / "drawn.txt").write_text("damaged")
        rebuilt = upstream(Cfg(n=n), workdir=work)  # same fingerprint, built again
        assert not rebuilt.cached and len(DRAWS) == 2
        again = STAGE(Cfg(), rebuilt, workdir=work)
        assert (again.fingerprint != first.fingerprint) is rebuilt_downstream
        assert again.cached is not rebuilt_downstream


def test_a_missing_input_artifact_is_an_error_naming_it(tmp_path: Path) -> None:
    from tasks.store.artifact import Artifact

    gone = Artifact(stage="up", fingerprint="f", path=str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=r"gone: input artifact directory not found"):
        STAGE(Cfg(), gone, workdir=tmp_path)


def test_missing_input_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.tsv: input file not found"):
        STAGE(Cfg(source=str(tmp_path / "nowhere.tsv")), workdir=tmp_path)


def test_code_digest_follows_code_not_comments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "probe_pkg"
    monkeypatch.syspath_prepend(str(tmp_path))
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("import numpy\n\ndef f():\n    return 1\n")
    stage_src = '"""Doc."""\nfrom probe_pkg.helper import f\n\ndef build():\n    return f()\n'
    (pkg / "stage.py").write_text(stage_src)

    def digest() -> str:
        _code_digest.cache_clear()
        return code_digest("probe_pkg.stage", roots=("probe_pkg",))

    base = digest()
    first, third = import_closure(["probe_pkg.stage"], roots=("probe_pkg",))
    assert set(first) == {"probe_pkg.stage", "probe_pkg.helper"} and "numpy" in third
    (pkg / "stage.py").write_text(stage_src.replace('"""Doc."""', '"""Other words."""  # a note'))
    assert digest() == base  # docstring and comment edits keep the cache
    (pkg / "helper.py").write_text("import numpy\n\ndef f():\n    return 2\n")
    assert digest() != base  # an edit in an imported module invalidates it


def test_sampled_digest_sees_edits_in_big_files(tmp_path: Path) -> None:
    big = tmp_path / "corpus.txt"
    big.write_bytes(b"a" * (SAMPLE_ABOVE + 1))
    first = sampled_file_digest(big)
    assert first.startswith("sampled:")
    with big.open("r+b") as f:
        f.seek(0)
        f.write(b"b")
    assert sampled_file_digest(big) != first
    small = tmp_path / "small.txt"
    small.write_text("abc")
    assert not sampled_file_digest(small).startswith("sampled:")


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(cfg: Cfg, *, out: Path, job: Job) -> dict:
        (out / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Stage("s", broken)(Cfg(), workdir=tmp_path)
    assert list((tmp_path / "s").iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: (d / "data.txt").write_text("x"), "data.txt: 1 bytes"),  # truncated
        (lambda d: (d / "sub" / "more.bin").write_bytes(b"\x00\x01\x03"), "more.bin: content differs"),
        (lambda d: (d / "data.txt").unlink(), "data.txt: missing"),
        (lambda d: (d / "extra.txt").write_text("?"), "extra.txt: not in the manifest"),
    ],
)
def test_damaged_artifact_is_rebuilt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, named: str
) -> None:
    first = STAGE(Cfg(n=3), workdir=tmp_path)
    damage(first.dir)
    with caplog.at_level(logging.WARNING, logger="tasks.store.stage"):
        again = STAGE(Cfg(n=3), workdir=tmp_path)
    assert not again.cached and len(CALLS) == 2
    assert named in caplog.text and "rebuilding" in caplog.text
    assert again.file("data.txt").read_text() == "xxx"
    assert again.file("sub/more.bin").read_bytes() == b"\x00\x01\x02"
    assert STAGE(Cfg(n=3), workdir=tmp_path).cached


def test_directory_without_manifest_is_rebuilt(tmp_path: Path) -> None:
    fp = STAGE(Cfg(), workdir=tmp_path).fingerprint
    (tmp_path / "s" / fp / MANIFEST).unlink()
    art = STAGE(Cfg(), workdir=tmp_path)
    assert not art.cached and (Path(art.path) / MANIFEST).is_file()


def test_foreign_directory_in_the_way_is_refused_and_kept(tmp_path: Path) -> None:
    fp = STAGE.key(Cfg(), (), tmp_path.resolve())
    foreign = tmp_path / "s" / json_digest(fp)
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("not bertflow's")
    with pytest.raises(ForeignDirectoryError, match="not created by bertflow"):
        STAGE(Cfg(), workdir=tmp_path)
    assert (foreign / "mine.txt").read_text() == "not bertflow's"


def fixed_location(cfg: Cfg, workdir: Path, fp: str) -> Path:
    return Path(cfg.source)


def test_fixed_location_replaces_only_its_own_directory(tmp_path: Path) -> None:
    stage = Stage("fixed", build_n, location=fixed_location)
    out = tmp_path / "out"
    stage(Cfg(n=1, source=str(out)), workdir=tmp_path / "w")
    assert (out / OWNER_MARK).is_file()
    stage(Cfg(n=2, source=str(out)), workdir=tmp_path / "w")  # another config: ours, replaced
    assert (out / "data.txt").read_text() == "xx"
    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.tex").write_text("precious")
    with pytest.raises(ForeignDirectoryError, match=r"users exists and was not created by bertflow"):
        stage(Cfg(n=1, source=str(users)), workdir=tmp_path / "w")
    assert sorted(p.name for p in users.iterdir()) == ["thesis.tex"]
    assert not list(users.parent.glob(".tmp-users-*"))  # nothing half-written is left beside it


SLOW_STAGE = """
import sys, time
from pathlib import Path
from pydantic import BaseModel
from tasks.store.stage import Stage

class Cfg(BaseModel):
    n: int = 1

def slow(cfg, *, out, job):
    time.sleep(1.5)
    (out / "built-by").write_text(sys.argv[1])
    return {}

def main():
    art = Stage("slow", slow)(Cfg(), workdir=sys.argv[2])
    print(art.cached, (Path(art.path) / "built-by").read_text())
"""


def test_two_processes_build_once_and_share(tmp_path: Path) -> None:
    """A second process waits on the build lock, then reuses the first one's artifact."""
    (tmp_path / "slow_stage.py").write_text(SLOW_STAGE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{Path(__file__).parents[1]}"}
    command = [sys.executable, "-c", "import slow_stage; slow_stage.main()"]
    procs = [
        subprocess.Popen([*command, str(i), str(tmp_path / "w")], stdout=subprocess.PIPE, text=True, env=env)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert sorted(o[0] for o in outs) == ["False", "True"]  # one built, one reused
    assert outs[0][1] == outs[1][1]  # both see the same artifact


def test_a_killed_builds_leftover_is_removed_by_the_next_build(tmp_path: Path) -> None:
    fp = json_digest(STAGE.key(Cfg(), (), tmp_path.resolve()))
    leftover = tmp_path / "s" / f".tmp-{fp}-deadbeef"  # what a SIGKILL mid-build leaves
    leftover.mkdir(parents=True)
    (leftover / OWNER_MARK).write_text("{}")
    (leftover / "half.txt").write_text("partial")
    STAGE(Cfg(), workdir=tmp_path)
    assert not leftover.exists()


def test_demo_out_dir_pointing_at_a_users_folder_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """`--set demo.out_dir=<an existing folder>` must not wipe that folder."""
    from tasks.demo.stage import DemoConfig, make_demo_data

    folder = tmp_path / "Documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("four years of work")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    cfg = DemoConfig(out_dir=str(folder), n_corpus_docs=100, n_train=10, n_dev=10)
    with pytest.raises(ForeignDirectoryError, match=r"Documents exists and was not created by bertflow"):
        make_demo_data(cfg, workdir=tmp_path / "work")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not list(tmp_path.glob(".tmp-Documents-*"))
