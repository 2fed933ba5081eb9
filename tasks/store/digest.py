"""Content digests: of the files a stage reads, of an artifact's files, and of the code that builds it.

A stage's fingerprint must change whenever its output could. Three kinds of input go into it:

- files that are not upstream artifacts (corpora, task data). Downstream task files are
  small and hashed whole. Corpus files may be terabytes, so above ``SAMPLE_ABOVE`` bytes a
  file is identified by its size, its modification time and the sha256 of ``SAMPLES``
  blocks of ``BLOCK`` bytes spread evenly over it (first and last block included): an edit
  that keeps size, mtime and every sampled block is the only change it can miss.
- the code: the source of the module that builds the output and of every first-party
  module it imports, directly or not (``tasks``, ``models``, ``registry``), read as ASTs
  without docstrings, so a comment or docstring edit keeps the cache while any code edit
  invalidates it; plus the versions of the third-party distributions that code imports
  (a new torch or tokenizers may produce other numbers).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

FIRST_PARTY = ("tasks", "models", "registry")
SAMPLE_ABOVE = 8 << 20  # bytes: larger corpus files are sampled, smaller ones hashed whole
BLOCK = 1 << 16
SAMPLES = 16
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sampled_file_digest(path: Path) -> str:
    """A corpus file's identity: whole-file sha256 when small, else size + mtime + sampled blocks."""
    stat = path.stat()
    if stat.st_size <= SAMPLE_ABOVE:
        return sha256_file(path)
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    last = stat.st_size - BLOCK
    with path.open("rb") as f:
        for i in range(SAMPLES):
            f.seek(last * i // (SAMPLES - 1))
            digest.update(f.read(BLOCK))
    return "sampled:" + digest.hexdigest()


def files_digest(paths: Iterable[Path], *, sampled: bool = False) -> dict[str, str]:
    """``{absolute path: digest}`` of every file read; a missing file raises naming it."""
    out = {}
    for path in paths:
        resolved = Path(path).resolve()
        if not resolved.is_file():
            raise FileNotFoundError(f"{path}: input file not found")
        out[str(resolved)] = sampled_file_digest(resolved) if sampled else sha256_file(resolved)
    return out


def json_digest(payload: Any, length: int = 16) -> str:
    """Short sha256 of a JSON-able value (keys sorted, so dict order does not matter)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def code_digest(*modules: str, roots: tuple[str, ...] = FIRST_PARTY) -> str:
    """Digest of ``modules``, every module of ``roots`` they import, and the third-party versions.

    Cached per process: code does not change under a running pipeline.
    """
    return _code_digest(tuple(sorted(modules)), roots)


@cache
def _code_digest(modules: tuple[str, ...], roots: tuple[str, ...]) -> str:
    first, third = import_closure(modules, roots)
    digest = hashlib.sha256()
    for name in sorted(first):
        digest.update(name.encode() + b"\0" + _normalised_source(first[name]).encode() + b"\0")
    for dist in sorted(third):
        digest.update(f"{dist}=={third[dist]}\0".encode())
    return digest.hexdigest()[:16]


def import_closure(
    modules: Iterable[str], roots: tuple[str, ...] = FIRST_PARTY
) -> tuple[dict[str, Path], dict[str, str]]:
    """(first-party module -> source file, third-party distribution -> version) reachable by import."""
    first: dict[str, Path] = {}
    third: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in first:
            continue
        path = _source_file(name)
        if path is None:
            raise ModuleNotFoundError(f"code digest: no source for module {name!r}")
        first[name] = path
        for imported in _imports(path, name):
            root = imported.split(".")[0]
            if root in roots:
                if _source_file(imported) is not None:
                    todo.append(imported)
            elif root not in sys.stdlib_module_names:
                third.add(root)
    return first, _versions(third)


def _source_file(module: str) -> Path | None:
    """The ``.py`` file of a module, found on disk below its top-level package, without importing it.

    (``importlib.util.find_spec("a.b")`` imports ``a`` first; walking the folders does not, so a
    digest never pays for importing code it only reads.) None for a name that is no module, such
    as the function in ``from a import f``.
    """
    if module == "__main__":  # a stage declared in a script run directly
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        return Path(main) if main and main.endswith(".py") else None
    root, *parts = module.split(".")
    try:
        spec = importlib.util.find_spec(root)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not parts:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for base in spec.submodule_search_locations or ():
        folder = Path(base).joinpath(*parts)
        for candidate in (folder / "__init__.py", folder.with_suffix(".py")):
            if candidate.is_file():
                return candidate
    return None


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime in ns, size): the key under which a file's parse is cached, so an edit is re-read."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _imports(path: Path, module: str) -> frozenset[str]:
    """Modules named by the import statements of a source file (``from a import b``: a, and a.b)."""
    return _parsed_imports(path, module, _stamp(path))


@cache
def _parsed_imports(path: Path, module: str, stamp: tuple[int, int]) -> frozenset[str]:
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def _normalised_source(path: Path) -> str:
    """The module's AST without docstrings: comments, formatting and docstrings do not count."""
    return _parsed_source(path, _stamp(path))


@cache
def _parsed_source(path: Path, stamp: tuple[int, int]) -> str:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@cache
def _distribution_owners() -> dict[str, list[str]]:
    """Import root -> installed distributions; scanning every installed package takes ~1 s, so once."""
    return importlib.metadata.packages_distributions()


def _versions(import_roots: set[str]) -> dict[str, str]:
    """Installed distribution versions of third-party import roots (unknown roots are skipped)."""
    owners = _distribution_owners()
    out = {}
    for root in import_roots:
        for dist in owners.get(root, ()):
            out[dist] = importlib.metadata.version(dist)
    return out
