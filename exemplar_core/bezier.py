"""The Paint-by-Example Bezier edit mask: one quadratic curve per box side, bulging outward.

One implementation serves the trainer (``train.augment``) and the ComfyUI node
(``bezier_mask_from_mask``). It reproduces the official dataset code exactly, quirks included:

- four degree-2 curves run clockwise between the corners of the *original* box; each control point
  sits at its side's midpoint pushed out to the *extended* box's coordinate on that side, so the
  apex bulges halfway to the extended edge;
- each curve is evaluated at t = 0.05 * i for i = 1..18 (never the corners, never t = 0.95), with
  the arithmetic of the ``bezier`` package (``evaluate_multi_vs``), so the float values match;
- dedupe quirk: a point is kept only if its un-jittered x is not yet in that curve's x-list and
  its un-jittered y is not yet in the y-list. The off-axis coordinate is symmetric about t = 0.5,
  so most points past the apex are dropped on exact float matches, which gives the polygon its
  irregular, asymmetric shape (``dedupe_quirk=False`` keeps all 18 points per side);
- every kept point gets an integer jitter uniform in [-jitter, +jitter] on x and on y.

Boxes are ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive as in the official code.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .masks import mask_box

Box = tuple[float, float, float, float]
Point = tuple[float, float]

# t = 0.05 * i for i = 1..18, computed as the official loop does (i * 0.05).
CURVE_T_VALUES: tuple[float, ...] = tuple(i * 0.05 for i in range(1, 19))
DEFAULT_JITTER = 5
DEFAULT_BOX_EXPANSION = 0.4  # largest share of the free space a box side is pushed out by


def _quadratic_point(p0: float, p1: float, p2: float, t: float) -> float:
    """One coordinate of a quadratic Bezier, with the ``bezier`` package's float arithmetic."""
    lambda1 = 1.0 - t
    return (lambda1 * p0 + (2.0 * t) * p1) * lambda1 + (t * t) * p2


def _box_curves(box: Box, extended_box: Box) -> list[tuple[Point, Point, Point]]:
    """The four (start, control, end) triples, clockwise from the top side."""
    x0, y0, x1, y1 = box
    ex0, ey0, ex1, ey1 = extended_box
    mid_x = (x0 + x1) / 2
    mid_y = (y0 + y1) / 2
    return [
        ((x0, y0), (mid_x, ey0), (x1, y0)),  # top
        ((x1, y0), (ex1, mid_y), (x1, y1)),  # right
        ((x1, y1), (mid_x, ey1), (x0, y1)),  # bottom
        ((x0, y1), (ex0, mid_y), (x0, y0)),  # left
    ]


def bezier_polygon(
    box: Sequence[float],
    extended_box: Sequence[float],
    rng: random.Random,
    jitter: int = DEFAULT_JITTER,
    dedupe_quirk: bool = True,
) -> list[Point]:
    """Polygon points (pixels) of the Bezier edit shape for ``box`` inside ``extended_box``.

    ``rng`` supplies the integer jitter (``rng.randint(-jitter, jitter)``, x then y per point).
    """
    box_t = _as_box(box, "box")
    ext_t = _as_box(extended_box, "extended_box")
    points: list[Point] = []
    for start, control, end in _box_curves(box_t, ext_t):
        xs: list[float] = []
        ys: list[float] = []
        for t in CURVE_T_VALUES:
            x = _quadratic_point(start[0], control[0], end[0], t)
            y = _quadratic_point(start[1], control[1], end[1], t)
            if dedupe_quirk and (x in xs or y in ys):
                continue
            points.append((x + rng.randint(-jitter, jitter), y + rng.randint(-jitter, jitter)))
            xs.append(x)
            ys.append(y)
    return points


def fill_polygon(points: Sequence[Point], width: int, height: int) -> np.ndarray:
    """Rasterise a polygon with PIL (as the official code): ``[H, W]`` float32, 1 = inside."""
    canvas = Image.new("L", (width, height), 0)
    if len(points) >= 3:
        ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def bezier_mask(
    box: Sequence[float],
    extended_box: Sequence[float],
    width: int,
    height: int,
    rng: random.Random,
    jitter: int = DEFAULT_JITTER,
    dedupe_quirk: bool = True,
) -> np.ndarray:
    """Edit mask ``[height, width]`` float32 in {0, 1} (1 = edit) filled with the Bezier shape."""
    points = bezier_polygon(box, extended_box, rng, jitter=jitter, dedupe_quirk=dedupe_quirk)
    return fill_polygon(points, width, height)


def extend_box(
    box: Sequence[float],
    width: int,
    height: int,
    rng: random.Random,
    box_expansion: float = DEFAULT_BOX_EXPANSION,
) -> tuple[int, int, int, int]:
    """Push each side of an integer box out by ``randint(0, int(box_expansion * free space))``.

    Free space is the distance from that side to the image border (official dataset code).
    Draw order: left, top, right, bottom.
    """
    if not 0.0 <= box_expansion <= 1.0:
        raise ValueError(
            f"box_expansion must be in 0..1 (a share of the free space), got {box_expansion}"
        )
    x0, y0, x1, y1 = (int(v) for v in box)
    return (
        x0 - rng.randint(0, int(box_expansion * max(x0, 0))),
        y0 - rng.randint(0, int(box_expansion * max(y0, 0))),
        x1 + rng.randint(0, int(box_expansion * max(width - x1, 0))),
        y1 + rng.randint(0, int(box_expansion * max(height - y1, 0))),
    )


def bezier_mask_from_mask(
    edit_mask: torch.Tensor,
    seed: int,
    jitter: int = DEFAULT_JITTER,
    box_expansion: float = DEFAULT_BOX_EXPANSION,
    dedupe_quirk: bool = True,
) -> torch.Tensor:
    """Reshape each mask's bounding box into a Paint-by-Example Bezier edit mask.

    edit_mask: ``[H, W]`` or ``[B, H, W]`` float in 0..1 (1 = edit). Returns the same shape, dtype
    and device, values in {0, 1}. ``box_expansion`` is the largest share (0..1) of the free space
    between each box side and the image border by which that side's control point is pushed out (a
    random draw per side, as in training: 0.4). ``jitter`` is the integer pixel jitter of every
    polygon point. Deterministic for a given seed; batch item ``b`` uses seed ``seed + b``. An
    empty mask stays empty.
    """
    if edit_mask.ndim not in (2, 3):
        raise ValueError(
            f"edit_mask must be [H, W] or [B, H, W] (1 = edit), got shape {list(edit_mask.shape)}"
        )
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0 pixels, got {jitter}")
    batch = edit_mask if edit_mask.ndim == 3 else edit_mask[None]
    height, width = batch.shape[-2:]
    out = torch.zeros_like(batch)
    for index, mask in enumerate(batch):
        box = mask_box(mask)
        if box is None:
            continue
        rng = random.Random(seed + index)
        ext = extend_box(box, width, height, rng, box_expansion)
        shape = bezier_mask(box, ext, width, height, rng, jitter=jitter, dedupe_quirk=dedupe_quirk)
        out[index] = torch.from_numpy(shape).to(device=out.device, dtype=out.dtype)
    return out if edit_mask.ndim == 3 else out[0]


def _as_box(values: Sequence[float], name: str) -> Box:
    if len(values) != 4:
        raise ValueError(f"{name} must be (x0, y0, x1, y1), got {list(values)}")
    x0, y0, x1, y1 = (float(v) for v in values)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{name} {list(values)} is degenerate: need x1 > x0 and y1 > y0")
    return x0, y0, x1, y1
