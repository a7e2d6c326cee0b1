"""Resumable checkpoint folders: published whole or not at all, verified before a resume.

Under ``out_dir/checkpoints``::

    step-00002000/      one complete checkpoint; its manifest.json lists every file with its size
                        and SHA-256 (written last, so a folder without it was never finished)
    latest              the name of the newest complete checkpoint (replaced atomically)
    .tmp-step-.../      a checkpoint being written (left behind only by a kill; removed later)
    .old-step-.../      a folder being replaced (idem)

The promise: whatever moment a run is killed at, ``latest`` names a complete checkpoint (or is
absent when none was ever finished), and a resume either finds the newest complete checkpoint or
fails with a message; it never starts from scratch while checkpoints exist.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from exemplar_core.files import atomic_write_text, fsync_file, fsync_folder, match_umask

MANIFEST = "manifest.json"
LATEST = "latest"
# What a resume reads besides the per-rank rng-N.pt files.
REQUIRED = ("state.json", "trainable.safetensors", "optimizer.pt", "scheduler.pt")
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def seal(folder: Path, step: int) -> None:
    """Make every file in ``folder`` durable with the umask's mode, then write the manifest.

    Each file is hashed as read back, not while written: safetensors writes to a path itself, and
    hashing its bytes on the way would mean serialising the weights in memory first."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST or not path.is_file():
            continue
        match_umask(path)
        fsync_file(path)
        files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    text = json.dumps({"step": step, "files": files}, indent=1)
    manifest = folder / MANIFEST
    manifest.write_text(text, encoding="utf-8")
    fsync_file(manifest)
    fsync_folder(folder)


def problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (missing, unfinished, a file changed since it was
    written), or None when it is complete. Folders from before manifests existed count as
    complete when every file a resume reads is present."""
    if not folder.is_dir():
        return "it does not exist"
    manifest = folder / MANIFEST
    if not manifest.is_file():
        missing = [n for n in (*REQUIRED, "rng-0.pt") if not (folder / n).is_file()]
        if missing:
            return f"it is unfinished (no {MANIFEST}; missing {', '.join(missing)})"
        return None
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its {MANIFEST} is unreadable ({exc})"
    for name, entry in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes, {entry['size']} were written"
        if _sha256(path) != entry["sha256"]:
            return f"{name} changed after it was written (SHA-256 differs)"
    missing = [n for n in REQUIRED if n not in listed]
    return f"it lacks {', '.join(missing)}" if missing else None


def read_latest(root: Path) -> str | None:
    try:
        return (root / LATEST).read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def step_folders(root: Path) -> list[Path]:
    """Every ``step-N`` folder under ``root``, newest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def has_checkpoints(root: Path) -> bool:
    """Whether ``root`` holds any checkpoint (complete or not) or a ``latest`` pointer."""
    return bool(step_folders(root)) or (root / LATEST).exists()


@dataclass
class Choice:
    """The checkpoint a resume uses (None: there is none) and what was passed over, and why."""

    path: Path | None
    passed_over: list[str] = field(default_factory=list)


def find_resumable(root: Path) -> Choice:
    """The checkpoint ``latest`` names when it is complete, else the newest complete one."""
    choice = Choice(None)
    named = read_latest(root)
    candidates = step_folders(root)
    if named is not None:
        first = root / named
        candidates = [first] + [p for p in candidates if p.name != named]
    for folder in candidates:
        reason = problem(folder)
        if reason is None:
            choice.path = folder
            return choice
        label = f"{folder.name} (named by {LATEST})" if folder.name == named else folder.name
        choice.passed_over.append(f"{label}: {reason}")
    return choice


def publish(root: Path, tmp: Path, name: str) -> Path:
    """Move the sealed ``tmp`` folder to ``root/name`` and point ``latest`` at it.

    When ``root/name`` already exists (a checkpoint found corrupt, or written by an earlier try
    at the same step), ``latest`` is first pointed at another complete checkpoint (or removed when
    there is none), so no kill between the steps leaves it naming a missing folder.
    """
    final = root / name
    old = root / f".old-{name}"
    if final.exists():
        if read_latest(root) == name:
            others = (p for p in step_folders(root) if p.name != name)
            newest = next((p for p in others if problem(p) is None), None)  # newest first
            if newest is not None:
                atomic_write_text(root / LATEST, newest.name)
            else:
                (root / LATEST).unlink(missing_ok=True)
                fsync_folder(root)
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_folder(root)
    atomic_write_text(root / LATEST, name)
    shutil.rmtree(old, ignore_errors=True)
    return final


def prune(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (never the one ``latest`` names),
    and what killed runs left behind (temporary and replaced folders)."""
    named = read_latest(root)
    complete = [p for p in step_folders(root) if (p / MANIFEST).is_file() or problem(p) is None]
    for old in complete[keep:]:
        if old.name != named:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".old-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    remove_unfinished(root)


def remove_unfinished(root: Path) -> None:
    """Remove the ``.tmp-`` folders of saves that a kill interrupted."""
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


__all__ = [
    "Choice",
    "checkpoint_name",
    "find_resumable",
    "has_checkpoints",
    "problem",
    "prune",
    "publish",
    "read_latest",
    "remove_unfinished",
    "seal",
    "step_folders",
]
