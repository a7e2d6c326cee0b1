"""docs/code-map.md names every module of the project once, under its folder, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("exemplar_core", "nodes", "train", "bench", "workflows")


def _modules() -> set[str]:
    found = {p.name for p in ROOT.glob("*.py")}
    for folder in FOLDERS:
        found |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py")}
    return {name for name in found if "__pycache__" not in name}


def _mapped() -> set[str]:
    """Each `*.py` named in a folder's section, as a path from the repository root."""
    named: set[str] = set()
    folder = ""
    for line in (ROOT / "docs/code-map.md").read_text().splitlines():
        heading = re.match(r"## `(\w+)/`", line)
        if heading:
            folder = heading.group(1) + "/"
        elif line.startswith("## "):
            folder = ""
        if line.startswith("|"):  # the "where to change what" table points, it does not list
            continue
        named |= {folder + name for name in re.findall(r"`([\w/]+\.py)`", line)}
    return named


def test_the_code_map_names_every_module_and_only_modules_that_exist():
    modules, mapped = _modules(), _mapped()
    assert not modules - mapped, (
        f"modules missing from docs/code-map.md: {sorted(modules - mapped)}"
    )
    assert not mapped - modules, (
        f"docs/code-map.md names modules that do not exist: {sorted(mapped - modules)}"
    )
