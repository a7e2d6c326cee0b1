"""Writing files that users keep: destinations checked before any work, atomic replacement.

Every file the pack writes (converted checkpoints, trainer exports, edited images, contact
sheets, diffusers folders) goes through ``atomic_write``; every command that writes one calls
``check_destination`` (a file) or ``check_out_folder`` (a folder for results) before it reads its
inputs, so a bad output path fails in a second, not after minutes of loading.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path


class DestinationError(ValueError):
    """An output path that cannot or must not be written; the message says what to do."""


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same path, or links or hard links to one file)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_destination(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    what: str = "output",
) -> Path:
    """Refuse an output path that would fail or destroy something, before any work is done.

    Refused: a folder; an existing file unless ``overwrite``; one of ``inputs`` (a file read by
    the same command, also through a link); a path whose parent cannot be created or written.
    A missing parent folder is fine: ``atomic_write`` creates it.
    """
    out = Path(path)
    if out.is_dir():
        raise DestinationError(f"{what} {out} is a folder; give a file name inside it")
    for source in inputs:
        if source is not None and same_file(out, Path(source)):
            raise DestinationError(
                f"{what} {out} is one of the inputs ({source}); write the result to another file"
            )
    if out.exists() and not overwrite:
        raise DestinationError(
            f"{what} {out} already exists; choose another path or pass --overwrite"
        )
    existing = _nearest_existing(out.parent if str(out.parent) else Path("."))
    if not existing.is_dir():
        raise DestinationError(
            f"{what} {out}: {existing} is a file, so the folder {out.parent} cannot be created"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        missing = "" if existing == out.parent else f" (to create {out.parent})"
        raise DestinationError(
            f"{what} {out}: the folder {existing} is not writable{missing}; choose a folder you "
            f"can write to"
        )
    return out


def check_out_folder(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Refuse a folder for results that cannot become one, before any work: an existing file,
    a path with a file on the way, a folder (or its nearest existing parent) not writable.
    Creates nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DestinationError(
            f"{what} {out} is an existing file; {what} names a folder for the results"
        )
    existing = _nearest_existing(out)
    if not existing.is_dir():
        raise DestinationError(f"cannot create the {what} folder {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DestinationError(
            f"cannot write into the {what} folder {out}: {existing} is not writable; choose a "
            f"folder you can write to"
        )
    return out


def _create_temp(folder: Path, name: str) -> Path:
    """A new empty file next to the destination, created with mode 0666 minus the umask.

    ``tempfile.mkstemp`` would make it 0600, which the rename would carry to the destination:
    a ComfyUI running as another user (Docker, a service account) could not read the model.
    """
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def umask_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (0644 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def match_umask(path: Path, mode: int | None = None) -> None:
    """Give a file another writer made owner-only (safetensors, ``mkstemp``) the umask's mode, or
    ``mode`` when given (``atomic_write`` passes the one the kernel gave its new temp file)."""
    mode = umask_mode() if mode is None else mode
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk (opened for writing: Windows refuses to flush a
    read-only handle)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (POSIX); skipped where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], object], *, overwrite: bool = True
) -> Path:
    """Create ``path`` through ``write(tmp_path)``: a reader never sees a partial file.

    The temp file is made in the destination's folder (created if missing) with the user's umask
    (0644 under umask 022), flushed to disk, then renamed over ``path``; on any failure it is
    removed and ``path`` is untouched. ``overwrite`` False refuses an existing ``path``.
    """
    out = Path(path)
    if out.exists() and not overwrite:
        raise DestinationError(f"{out} already exists; choose another path or pass --overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DestinationError(f"cannot create the folder {out.parent}: {err}") from err
    tmp = _create_temp(out.parent, out.name)
    try:
        # 0666 minus the umask, as the kernel applied it: umask_mode() would change the process
        # umask for a moment, under other threads' feet (a ComfyUI server has several).
        mode = stat.S_IMODE(tmp.stat().st_mode)
        write(tmp)
        match_umask(tmp, mode)  # some writers replace the file with their own, 0600 (safetensors)
        fsync_file(tmp)
        if not overwrite and out.exists():
            raise DestinationError(f"{out} appeared while it was being written; nothing replaced")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(out.parent)
    return out


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> Path:
    """``atomic_write`` of a UTF-8 text file."""
    return atomic_write(
        path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite
    )
