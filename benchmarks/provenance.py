"""What a benchmark JSON records about its own run: command, dates, machine, versions, commit.

Paths never leave as absolute paths: every command-line argument that is an absolute path
is rewritten relative to the repository root (``../shared/data/...``), so result files can
be committed and compared across machines.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def portable_path(value: str | os.PathLike[str]) -> str:
    """``value`` relative to the repository root when it is an absolute path, else unchanged.

    A path outside the repository's parent (a scratch dir such as /tmp/x) says nothing on
    another machine, so it is written as ``<scratch>/<name>``; ``../shared/data`` stays.
    """
    text = os.fspath(value)
    if not os.path.isabs(text):
        return text
    relative = os.path.relpath(text, REPO)
    return f"<scratch>/{Path(text).name}" if relative.startswith(f"..{os.sep}..") else relative


def command_line(argv: list[str] | None = None) -> str:
    """``python <script> <args>`` as run, absolute paths (also ``--opt=/abs``) made relative."""
    args = list(sys.argv if argv is None else argv)
    parts = [portable_path(args[0]) if args else ""]
    for arg in args[1:]:
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            parts.append(f"{key}={portable_path(value)}")
        else:
            parts.append(portable_path(arg))
    return " ".join(["python", *parts])


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return None


def cpu_bf16() -> dict | None:
    """The CPU's vector level and bf16 matrix instructions as torch sees them (None without torch):
    a bf16 figure from a CPU without them measures PyTorch's slow fallback matmul, not a model."""
    try:
        import torch

        from tasks.engine.device import cpu_bf16_instructions
    except ImportError:
        return None
    return {"capability": torch.backends.cpu.get_cpu_capability()} | cpu_bf16_instructions()


def machine() -> dict:
    """Platform, CPU model and count, bf16 support, memory, and the load average (the box is shared)."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_bf16": cpu_bf16(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": memory_gb(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def versions(*packages: str) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed), plus Python's."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_state() -> dict:
    """HEAD commit and whether the working tree had uncommitted changes (None outside git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def provenance(packages: tuple[str, ...], started: str) -> dict:
    """The block every benchmark JSON starts with."""
    return {
        "command": command_line(),
        "started_utc": started,
        "finished_utc": now(),
        "machine": machine(),
        "versions": versions(*packages),
        "git": git_state(),
    }
