"""Checks every training entry point makes before any work: optional packages and the output folder.

Kept free of heavy imports (no torch) so that a missing package or an unusable ``out_dir`` is
reported within a second, before data is generated or a model is built.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

INSTALL = 'pip install -e ".[train]"'
# The package each train.optimizer needs beyond torch (train/optim.py builds them).
OPTIMIZER_PACKAGES = {"adamw8bit": "bitsandbytes"}


class PreflightError(ValueError):
    """A training run cannot start: say what is missing and what to do."""


def training_extra() -> tuple[str, ...]:
    """The packages of the ``train`` extra (pyproject.toml) that the trainer imports (peft for
    LoRA training; bitsandbytes only when ``train.optimizer`` asks for it)."""
    tomli = ("tomli",) if sys.version_info < (3, 11) else ()
    return ("accelerate", "tensorboard", "peft") + tomli


def require_training_extra() -> None:
    """Raise PreflightError naming every missing package of the ``train`` extra."""
    missing = []
    for name in training_extra():
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    if missing:
        raise PreflightError(
            f"the trainer needs the training extra, and {'; '.join(missing)} could not be "
            f"imported. Install it from the repository root with: {INSTALL}"
        )


def require_optimizer_package(optimizer: str) -> None:
    """Raise PreflightError when ``train.optimizer`` needs a package that cannot be imported
    (``adamw8bit``: bitsandbytes, in the ``train`` extra); the other optimisers are torch's."""
    package = OPTIMIZER_PACKAGES.get(optimizer)
    if package is None:
        return
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise PreflightError(
            f"train.optimizer = {optimizer!r} needs {package}, which could not be imported "
            f"({exc}). Install it with: pip install {package} (or {INSTALL} from the "
            "repository root), or choose train.optimizer = 'adamw' or 'adafactor'"
        ) from exc


def is_run_folder(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds (the start of) a training run of this trainer."""
    return any((out_dir / name).exists() for name in ("checkpoints", "config.toml", "train.log"))


def check_out_dir(out_dir: str | Path, resume: bool) -> None:
    """Before any work: ``out_dir`` is writable, a resume names a run, a new run overwrites none.

    A new run in a folder that already holds checkpoints would mix two runs' checkpoints and
    replace the old run's files; a resume of a folder that is not a run would silently train
    from scratch.
    """
    from .checkpoints import has_checkpoints

    out = Path(out_dir)
    root = out / "checkpoints"
    if resume and not is_run_folder(out):
        state = "does not exist" if not out.exists() else "holds no training run"
        raise PreflightError(
            f"--resume: out_dir {out} {state} (no checkpoints/, config.toml or train.log). "
            "Give the out_dir of the run to continue, or leave out --resume to start a new run"
        )
    if not resume and has_checkpoints(root):
        raise PreflightError(
            f"out_dir {out} already holds checkpoints of a run ({root}). Add --resume to "
            "continue that run, or choose another out_dir for a new one"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for folder in (out, root):
            if folder.is_dir():
                handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
                os.close(handle)
                os.unlink(probe)
    except OSError as exc:
        raise PreflightError(
            f"out_dir {out} cannot be written ({exc.strerror or exc}): the run could save "
            "nothing. Choose a writable out_dir (--set out_dir=...) or fix its permissions"
        ) from exc


__all__ = [
    "INSTALL",
    "PreflightError",
    "check_out_dir",
    "require_optimizer_package",
    "require_training_extra",
]
