"""Hostile files the loaders must refuse, shared by the unit, CLI, trainer and server tests."""

from __future__ import annotations

import os
from pathlib import Path


class RunsCode:
    """Unpickling this calls ``os.makedirs(marker)``: a stand-in for arbitrary code in a
    checkpoint (the marker folder existing afterwards means the code ran)."""

    def __init__(self, marker: str | os.PathLike[str]) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def write_huge_header(path: Path, claimed: int = 8_000_000_000) -> Path:
    """A .safetensors whose 8-byte length claims a ``claimed``-byte header it does not have."""
    path.write_bytes(claimed.to_bytes(8, "little") + b"{}")
    return path
