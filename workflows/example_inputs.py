"""Make the example inputs the newer templates load beyond source, mask and exemplar.

    python workflows/example_inputs.py           # (re)write the files (same bytes every run)
    python workflows/example_inputs.py --check   # exit 1 if a file differs from what this makes

- ``exemplar_cutout.png``: the object of ``exemplar.png`` on a transparent background, as
  background-removal tools save it (transparent pixels black), off-centre on a wider canvas. The
  exemplar is the miniature world's object on its plain background (235 grey), softened at the
  edge. The alpha unmixes that edge: each pixel is a blend of the background and the object's
  colour next to it (the mean of the solid object pixels within 2 px), alpha = the blend's share
  of object.
- ``mask2.png`` and ``exemplar2.png``: the several-objects template's second edit area and
  exemplar, drawn with the miniature world's own code (``train/synthetic.py``), the world the
  embedded model was trained on, so the second edit is one it can make.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the checkout's train/, not an installed one
    sys.path.insert(0, str(REPO))

from train.synthetic import ObjectSpec, make_exemplar_with_mask  # noqa: E402 (the line above)

EXAMPLE_INPUTS = REPO / "example_inputs"

BACKGROUND = 235.0  # the miniature world's exemplar background (train/synthetic.py)
SOLID = 20.0  # farther than this from the background (per channel): surely the object
CANVAS = (128, 96)  # width, height: wider than tall, so framing modes differ visibly
OFFSET = (36, -6)  # where the exemplar's top-left corner goes on the canvas

SOURCE_SIZE = 128  # example_inputs/source.png
# An empty stretch of the source's background, right of the first mask (x 15-65, y 40-102).
MASK2_BOX = (76, 22, 118, 70)  # (left, top, right, bottom), end-exclusive
EXEMPLAR2 = ObjectSpec("square", "blue", "solid", (0, 0, 96, 96), 0.0)  # box, angle: redrawn
EXEMPLAR2_SEED = 2


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


def cutout_exemplar() -> Image.Image:
    """``exemplar.png``'s object cut out, on its transparent canvas (RGBA)."""
    exemplar = np.asarray(Image.open(EXAMPLE_INPUTS / "exemplar.png").convert("RGB"))
    canvas = Image.new("RGBA", CANVAS, (0, 0, 0, 0))
    canvas.paste(Image.fromarray(cutout(exemplar), "RGBA"), OFFSET)
    return canvas


def second_mask() -> Image.Image:
    """The second edit area: white = repaint, the source's size."""
    mask = Image.new("L", (SOURCE_SIZE, SOURCE_SIZE), 0)
    left, top, right, bottom = MASK2_BOX
    ImageDraw.Draw(mask).rectangle([left, top, right - 1, bottom - 1], fill=255)
    return mask


def second_exemplar() -> Image.Image:
    """A blue square on the world's plain light exemplar background, 96 px like exemplar.png."""
    image, _silhouette = make_exemplar_with_mask(EXEMPLAR2, random.Random(EXEMPLAR2_SEED))
    return image


def make() -> dict[str, bytes]:
    """File name in example_inputs/ -> its PNG bytes."""
    files = {}
    for name, image in (
        ("exemplar_cutout.png", cutout_exemplar()),
        ("mask2.png", second_mask()),
        ("exemplar2.png", second_exemplar()),
    ):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        files[name] = buffer.getvalue()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, data in make().items():
        path = EXAMPLE_INPUTS / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
            continue
        path.write_bytes(data)
        print(f"wrote {path.relative_to(REPO)} ({len(data)} bytes)")
    if stale:
        print(f"differ from what workflows/example_inputs.py makes (run it): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
