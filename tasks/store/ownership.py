"""Only ever delete what bertflow created.

Every directory bertflow may later replace (stage outputs, the demo data) gets an
ownership mark when it is created. Replacing a directory requires that mark; anything
else is refused with an error, so ``--set demo.out_dir=~/Documents`` cannot wipe a folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

OWNER_MARK = ".bertflow-owned"


class ForeignDirectoryError(RuntimeError):
    """A directory bertflow would replace but did not create."""


def mark_owned(directory: Path, stage: str) -> None:
    """Create ``directory`` (must not exist) with the mark that lets bertflow replace it later."""
    directory.mkdir(parents=True)
    (directory / OWNER_MARK).write_text(json.dumps({"created_by": "bertflow", "stage": stage}))


def is_owned(directory: Path) -> bool:
    return (directory / OWNER_MARK).is_file()


def check_replaceable(directory: Path) -> None:
    """Raise unless ``directory`` is absent, empty, or bertflow's own (checked before any work starts)."""
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return
    if not directory.is_dir() or not is_owned(directory):
        raise ForeignDirectoryError(
            f"{directory} exists and was not created by bertflow (no {OWNER_MARK} mark): "
            "refusing to replace it; choose another path or move it away"
        )


def remove_owned(directory: Path) -> None:
    """Delete ``directory`` if bertflow created it; an empty one goes too; anything else is refused."""
    check_replaceable(directory)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    elif directory.exists():
        shutil.rmtree(directory)
