"""Process identity that survives pid reuse: host, pid and the kernel's start time of the process.

A pid alone is not an identity: once a process dies the kernel hands its number to the
next one. Pairing it with the start time from ``/proc/<pid>/stat`` (clock ticks since
boot) tells "still the same process" from "a stranger with a recycled pid", which is what
``bertflow server stop`` and the orphaned-run check need before they act on a pid.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None when no such process runs (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after the last ')'
    fields = stat.rpartition(")")[2].split()  # fields[0] is field 3 of stat(5), the state
    return None if fields[0] == "Z" else fields[19]  # a zombie has exited; field 22: start time


def command_line(pid: int) -> list[str]:
    """argv of a running process ([] when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def identity(pid: int | None = None) -> str:
    """``host:pid:start-time`` of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_time(pid)}"


def is_alive(owner: str) -> bool:
    """Whether the process an ``identity()`` string names still runs (another host's: assumed alive)."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname():
        return True
    return pid.isdigit() and start_time(int(pid)) == started
