"""Files that hold data (spool, dead letters, rejects, status): private, and checked early.

Envelopes are plant data, so every file the core creates for them is 0600 and every
directory it creates for them 0700, whatever the process umask: modes are given to
``os.open``/``os.mkdir`` and then set again with ``fchmod``/``chmod``, because the
umask filters the mode given at creation.

``path_problem`` is the one "can this path be written?" check, used at start, by
``spark-sinks check`` and on reload, without creating anything.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700; existing ones are left alone
    (they belong to the operator)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """Open (creating if needed) a data file as 0600 and return the descriptor.

    An existing file that others may read is tightened to the owner's bits."""
    private_dir(path.parent)
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700 or FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_private(path: Path) -> BinaryIO:
    """A private file opened for appending (JSON lines: dead letters, rejects)."""
    return os.fdopen(open_private(path), "ab")


def path_problem(path: Path) -> str | None:
    """Why a data file at ``path`` could not be created or appended to, or ``None``.

    Creates nothing: missing directories count as creatable when the nearest existing
    ancestor is a writable directory."""
    if path.exists():
        if path.is_dir():
            return f"{path} is a directory"
        if not os.access(path, os.W_OK):
            return f"{path} is not writable"
        return None
    return dir_problem(path.parent)


def dir_problem(path: Path) -> str | None:
    """Why files could not be created in directory ``path`` (created if missing), or None."""
    p = path
    while not p.exists():
        if p.parent == p:
            return f"{path}: no existing parent directory"
        p = p.parent
    if not p.is_dir():
        return f"{p} is not a directory"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"directory {p} is not writable"
    return None
