"""How train/ writes files: whole or not at all, with the permissions the user's umask gives.

Some writers create their files owner-only (safetensors' ``save_file`` writes 0600, as does a
``tempfile.mkstemp`` file); :func:`match_umask` gives such a file the mode a plain ``open`` would
have, so a run's outputs can be shared exactly as the user's other files are.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def umask_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (0644 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def match_umask(path: Path) -> None:
    """Give ``path`` the mode a file created with ``open`` under the current umask would have."""
    os.chmod(path, umask_mode())


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` survive a power cut (no-op where unsupported)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a hidden file next to ``path``, then rename it over ``path``.

    A reader sees the old file or the new one, never a part; a failed write removes the temporary
    file and leaves ``path`` as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        match_umask(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


__all__ = ["atomic_text", "atomic_write", "fsync_file", "fsync_folder", "match_umask", "umask_mode"]
