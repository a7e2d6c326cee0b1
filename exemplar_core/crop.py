"""Crop a context window around the edit mask, process it at the model's resolution, stitch it back.

Only the window around the mask is processed, so a large photo costs about as much as a 512 one,
and everything outside the mask's feather band is the source pixel for pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .color import match_color
from .masks import binarize_edit_mask, keep_from_edit, mask_box


@dataclass(frozen=True)
class Region:
    """A window of the source (end-exclusive, inside the image) and the size it is processed at."""

    x0: int
    y0: int
    x1: int
    y1: int
    width: int  # processing width, a multiple of the model's size multiple
    height: int

    @property
    def crop_size(self) -> tuple[int, int]:
        """(width, height) of the window in source pixels."""
        return self.x1 - self.x0, self.y1 - self.y0


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def processing_size(
    width: int, height: int, resolution: int, multiple: int = 64
) -> tuple[int, int]:
    """Scale (width, height) so the longer side is ``resolution``; round both to ``multiple``."""
    scale = resolution / max(width, height)
    return _round_to(width * scale, multiple), _round_to(height * scale, multiple)


def _fit_span(center: float, side: int, limit: int) -> tuple[int, int]:
    """A span of ``side`` around ``center`` moved to lie inside [0, limit) (clipped if too long)."""
    side = min(side, limit)
    start = int(round(center - side / 2))
    start = min(max(start, 0), limit - side)
    return start, start + side


def plan_region(
    edit_mask: torch.Tensor,
    context_margin: float = 0.25,
    resolution: int = 512,
    feather: int = 16,
    multiple: int = 64,
) -> Region:
    """Choose the window to process for one edit mask ``[H, W]`` (1 = edit).

    The window is a square around the mask's box, grown by ``context_margin`` x the box's longer
    side on each side and by the feather band, and at least ``resolution`` px when the image allows
    (so a small mask is edited at native resolution with real context). It is moved inside the
    image and clipped to it when the image is smaller. Raises ValueError for an empty mask.
    """
    if context_margin < 0 or feather < 0 or resolution < multiple:
        raise ValueError(
            f"context margin ({context_margin}) and feather ({feather}) must be >= 0 and the "
            f"resolution ({resolution}) at least {multiple}"
        )
    height, width = edit_mask.shape[-2:]
    box = mask_box(edit_mask)
    if box is None:
        raise ValueError("the edit mask is empty: nothing to repaint")
    x0, y0, x1, y1 = box
    longest = max(x1 - x0, y1 - y0)
    side = math.ceil(longest * (1 + 2 * context_margin)) + 2 * feather
    side = max(side, min(resolution, width, height))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx0, rx1 = _fit_span(cx, side, width)
    ry0, ry1 = _fit_span(cy, side, height)
    pw, ph = processing_size(rx1 - rx0, ry1 - ry0, resolution, multiple)
    return Region(rx0, ry0, rx1, ry1, pw, ph)


def whole_image_region(width: int, height: int, resolution: int, multiple: int = 64) -> Region:
    """The whole image, longer side resized to ``resolution``, sides rounded to ``multiple``."""
    pw, ph = processing_size(width, height, resolution, multiple)
    return Region(0, 0, width, height, pw, ph)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """x: [B, C, H, W] -> [B, C, size[0], size[1]] (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrinking)


def crop_image(image: torch.Tensor, region: Region) -> torch.Tensor:
    """image: [B, 3, H, W] 0..1 -> the window at processing size [B, 3, height, width], 0..1."""
    window = image[..., region.y0 : region.y1, region.x0 : region.x1]
    return resize(window, (region.height, region.width)).clamp(0, 1)


def crop_mask(mask: torch.Tensor, region: Region) -> torch.Tensor:
    """mask: [B, 1, H, W] 0..1 -> [B, 1, height, width] (bilinear, soft edges kept)."""
    window = mask[..., region.y0 : region.y1, region.x0 : region.x1]
    return resize(window, (region.height, region.width), mode="bilinear").clamp(0, 1)


def feather_alpha(edit_mask: torch.Tensor, feather: int) -> torch.Tensor:
    """edit_mask: [B, 1, H, W] binary -> blend weight [B, 1, H, W]: 1 on the mask, falling linearly
    to 0 over ``feather`` px outside it (Chebyshev distance), exactly 0 beyond the band."""
    alpha = edit_mask.clone()
    ring = edit_mask
    for step in range(1, feather + 1):
        ring = F.max_pool2d(ring, kernel_size=3, stride=1, padding=1)
        weight = 1.0 - step / (feather + 1)
        alpha = torch.maximum(alpha, ring * weight)
    return alpha


def stitch(
    source: torch.Tensor,
    generated: torch.Tensor,
    region: Region,
    edit_mask: torch.Tensor,
    feather: int = 16,
) -> torch.Tensor:
    """Blend the processed window back into the source.

    source: [B, 3, H, W] 0..1; generated: [B, 3, height, width] 0..1 (the processed window);
    edit_mask: [B, 1, H, W] 0..1 (binarised at 0.5 here). Returns [B, 3, H, W]: the source outside
    the
    mask's feather band (bit for bit), the generated pixels on the mask, a linear ramp between.
    """
    crop_w, crop_h = region.crop_size
    back = resize(generated, (crop_h, crop_w)).clamp(0, 1)
    window_mask = binarize_edit_mask(
        edit_mask[..., region.y0 : region.y1, region.x0 : region.x1]
    ).to(source.dtype)
    alpha = feather_alpha(window_mask, feather)
    out = source.clone()
    window = out[..., region.y0 : region.y1, region.x0 : region.x1]
    blended = torch.where(alpha > 0, window * (1 - alpha) + back.to(source.dtype) * alpha, window)
    out[..., region.y0 : region.y1, region.x0 : region.x1] = blended
    return out


@dataclass(frozen=True)
class Window:
    """One edit's processing window: where it lies in the source and its pixels and masks at
    processing size, as the editor and the sampler node both feed them to the model."""

    region: Region
    image: torch.Tensor  # [B, 3, height, width] 0..1, the source's window
    edit_mask: torch.Tensor  # [B, 1, height, width] exactly 0 or 1, 1 = repaint

    @property
    def keep_mask(self) -> torch.Tensor:
        """[B, 1, height, width]: 1 - edit_mask."""
        return keep_from_edit(self.edit_mask)

    @property
    def masked_image(self) -> torch.Tensor:
        """[B, 3, height, width] 0..1: the window with the edit area mid-grey (0 in -1..1), the
        official masked image."""
        return self.image * self.keep_mask + 0.5 * self.edit_mask


def prepare_window(
    source: torch.Tensor,
    edit_mask: torch.Tensor,
    context_margin: float,
    resolution: int,
    feather: int,
    multiple: int,
    whole_image: bool = False,
) -> Window:
    """Plan the window of one edit and crop it to processing size.

    source: [1, 3, H, W] 0..1; edit_mask: [1, 1, H, W] exactly 0 or 1 (1 = repaint, not empty).
    The window is ``plan_region``'s around the mask, or the whole image with ``whole_image``; its
    edit mask is the source's, resized and binarised again.
    """
    height, width = source.shape[-2:]
    if whole_image:
        region = whole_image_region(width, height, resolution, multiple)
    else:
        region = plan_region(edit_mask[0, 0], context_margin, resolution, feather, multiple)
    window_edit = binarize_edit_mask(crop_mask(edit_mask, region))
    return Window(region, crop_image(source, region), window_edit)


def blend_back(
    source: torch.Tensor,
    generated: torch.Tensor,
    window: Window,
    edit_mask: torch.Tensor,
    feather: int,
    color_match: bool = False,
) -> torch.Tensor:
    """Put a processed window back into the source: ``stitch``, after resizing ``generated`` to
    the window's processing size when it has another and, with ``color_match``, matching its
    colours to the window's kept pixels.

    source: [1, 3, H, W] 0..1; generated: [1, 3, h, w] 0..1, any size; edit_mask: [1, 1, H, W]
    binary, the mask the window was planned on. Returns [1, 3, H, W].
    """
    size = (window.region.height, window.region.width)
    generated = resize(generated, size).clamp(0, 1)
    if color_match:
        generated = match_color(generated, window.image, window.keep_mask)
    return stitch(source, generated, window.region, edit_mask, feather)
