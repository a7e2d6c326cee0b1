"""No file of the project names a path that exists on one machine only (a developer's checkout,
home folder or scratch disk): examples name a placeholder such as ``/path/to/ComfyUI``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST_DIR = REPO / "tests" / "host"
if str(HOST_DIR) not in sys.path:
    sys.path.append(str(HOST_DIR))
from pbe_host import pack_files  # noqa: E402 (tests/host/pbe_host.py: the pack's file list)

# An absolute path under a folder that holds one machine's or one person's files, not inside a
# longer path or a URL (``/path/to/ComfyUI`` and ``https://host/work/x`` are fine).
MACHINE_PATH = re.compile(
    r"(?<![\w./~-])(?:/(?:work|home|Users|root|mnt)/[\w.-]"
    r"|[A-Za-z]:\\(?:Users|work)\\)"
)


def tracked_text_files() -> list[Path]:
    paths = (REPO / name for name in pack_files())
    return [path for path in paths if b"\0" not in path.read_bytes()[:8192]]


def test_no_file_names_a_path_of_one_machine():
    found = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "name a placeholder (/path/to/ComfyUI) instead:\n" + "\n".join(found)


def test_the_pattern_finds_machine_paths_and_spares_placeholders_and_urls():
    # built from pieces, so that this file names no such path itself
    for folder in ("work", "home/ana", "Users/ana", "root", "mnt/disk"):
        assert MACHINE_PATH.search(f"COMFYUI_PATH=/{folder}/ComfyUI (e.g. /{folder}/x)"), folder
    assert MACHINE_PATH.search("C:" + "\\Users\\ana")
    for line in ("COMFYUI_PATH=/path/to/ComfyUI", "https://example.org/work/x", "out_dir=/tmp/x"):
        assert not MACHINE_PATH.search(line), line
