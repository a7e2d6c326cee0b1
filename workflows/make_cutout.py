"""Make ``example_inputs/exemplar_cutout.png``, the cut-out exemplar the templates load: the
object of ``example_inputs/exemplar.png`` on a transparent background, as background-removal
tools save it (transparent pixels black), off-centre on a wider canvas.

    python workflows/make_cutout.py            # rewrite the file (same bytes every run)
    python workflows/make_cutout.py --check    # exit 1 if the file differs from what this makes

The exemplar is the miniature world's object on its plain background (235 grey), softened at the
edge. The alpha unmixes that edge: each pixel is a blend of the background and the object's colour
next to it (the mean of the solid object pixels within 2 px), alpha = the blend's share of object.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "example_inputs" / "exemplar.png"
TARGET = REPO / "example_inputs" / "exemplar_cutout.png"
BACKGROUND = 235.0  # the miniature world's exemplar background (train/synthetic.py)
SOLID = 20.0  # farther than this from the background (per channel): surely the object
CANVAS = (128, 96)  # width, height: wider than tall, so framing modes differ visibly
OFFSET = (36, -6)  # where the exemplar's top-left corner goes on the canvas


def cutout(exemplar: np.ndarray) -> np.ndarray:
    """exemplar: [H, W, 3] uint8 on the plain background -> [H, W, 4] uint8, straight alpha,
    transparent pixels black."""
    rgb = torch.from_numpy(exemplar.astype(np.float32)).permute(2, 0, 1)[None]
    offset = rgb - BACKGROUND
    solid = (offset.abs().amax(1, keepdim=True) > SOLID).float()
    solid = -F.max_pool2d(-solid, 3, 1, 1)  # one px in: the edge blend is not solid
    weight = F.avg_pool2d(solid, 5, 1, 2)
    nearby = F.avg_pool2d(offset * solid, 5, 1, 2) / weight.clamp_min(1e-6)  # object - background
    share = (offset * nearby).sum(1, keepdim=True) / (nearby * nearby).sum(1, keepdim=True)
    alpha = torch.where(solid > 0, 1.0, torch.where(weight > 0, share, 0.0)).clamp(0, 1)
    colour = torch.where(solid > 0, rgb, BACKGROUND + nearby).clamp(0, 255)
    alpha8 = (alpha * 255).round()
    colour = colour * (alpha8 > 0)
    out = torch.cat([colour.round(), alpha8], 1)[0].permute(1, 2, 0)
    return out.numpy().astype(np.uint8)


def make() -> bytes:
    """The cut-out on its canvas, as PNG bytes."""
    exemplar = np.asarray(Image.open(SOURCE).convert("RGB"))
    canvas = Image.new("RGBA", CANVAS, (0, 0, 0, 0))
    canvas.paste(Image.fromarray(cutout(exemplar), "RGBA"), OFFSET)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args(argv)
    data = make()
    if args.check:
        if not TARGET.is_file() or TARGET.read_bytes() != data:
            print(f"{TARGET.name} differs from what workflows/make_cutout.py makes: run it")
            return 1
        return 0
    TARGET.write_bytes(data)
    print(f"wrote {TARGET.relative_to(REPO)} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
