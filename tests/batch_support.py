"""Batch-editor test material: tiny images and manifests written in the test, the embedded
model at 64 px with two steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "pbe-mini.safetensors"
# Fast settings for the embedded model: its own 64 px, two DDIM steps.
FAST = ["--size", "64", "--steps", "2", "--scheduler", "ddim"]


def make_inputs(folder: Path, count: int) -> list[dict[str, object]]:
    """``count`` jobs' files in ``folder`` (sources 64x48, one mask, exemplars 32x32) -> the
    jobs as manifest rows (ids j00, j01, ..., seeds 10, 11, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    mask = np.zeros((48, 64), np.uint8)
    mask[12:36, 16:44] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    rows = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            folder / f"src{i}.png"
        )
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"ex{i}.png"
        )
        rows.append(
            {
                "id": f"j{i:02d}",
                "source": f"src{i}.png",
                "mask": "mask.png",
                "exemplar": f"ex{i}.png",
                "seed": 10 + i,
            }
        )
    return rows


def write_jsonl(
    path: Path, rows: list[dict[str, object]], extra_lines: tuple[str, ...] = ()
) -> Path:
    lines = [json.dumps(row) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def records(out: Path) -> list[dict[str, object]]:
    """Every record of every results*.jsonl in ``out``."""
    found = []
    for path in sorted(out.glob("results*.jsonl")):
        found += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return found
