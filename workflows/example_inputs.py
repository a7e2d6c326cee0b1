"""Make the second mask and exemplar of the several-objects template from the miniature world.

    python workflows/example_inputs.py           # writes example_inputs/mask2.png and exemplar2.png
    python workflows/example_inputs.py --check   # exit 1 if a file differs from what this makes

The pictures come from the miniature world's own drawing code (``train/synthetic.py``), the
world the embedded model was trained on, so the template's second edit is one it can make. They
are drawn from fixed numbers alone: running this again writes the same bytes.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the checkout's train/, not an installed one
    sys.path.insert(0, str(REPO))

from train.synthetic import ObjectSpec, make_exemplar_with_mask  # noqa: E402 (the line above)

EXAMPLE_INPUTS = REPO / "example_inputs"
SOURCE_SIZE = 128  # example_inputs/source.png
# An empty stretch of the source's background, right of the first mask (x 15-65, y 40-102).
MASK2_BOX = (76, 22, 118, 70)  # (left, top, right, bottom), end-exclusive
EXEMPLAR2 = ObjectSpec("square", "blue", "solid", (0, 0, 96, 96), 0.0)  # box, angle: redrawn
EXEMPLAR2_SEED = 2


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
    for name, image in (("mask2.png", second_mask()), ("exemplar2.png", second_exemplar())):
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
        print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print(f"differ from what workflows/example_inputs.py makes (run it): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
