"""Paint-by-Example's mask conventions, in one place: polarity, binarising, the mask's box, the
latent keep mask and the UNet input layout.

Polarity. User masks are *edit* masks: 1 (white) = repaint. The UNet sees the *keep* mask
(1 = keep), keep = 1 - edit, and the masked image is the source times keep (holes become 0, i.e.
mid-grey in -1..1). The UNet input is ``[noisy latent, masked-image latent, keep mask]``.

Where the inversion happens on the ComfyUI node path. ``nodes/model_builder.py`` sets the MODEL's
``concat_keys`` to ``("masked_image", "mask_inverted")``, and the sampler node hands ComfyUI the
binary *edit* mask of its window as ``concat_mask``. ComfyUI (0.3.64) turns it into the keep mask
in ``comfy/model_base.py``, ``BaseModel.concat_cond``: it resizes the mask to latent size
(``comfy.utils.common_upscale``, bilinear), rounds it to 0/1 (``.round()``) and, for the key
``"mask_inverted"``, appends ``1.0 - mask``. So the node path never builds a keep mask itself: the
edit -> keep flip is ComfyUI's, and ComfyUI's stock ``InpaintModelConditioning`` + ``KSampler``
chain feeds this pack's MODEL the same way.

Binary on the node path, soft in the editor, both on purpose. Because of that ``.round()`` the
node path's latent keep mask is binary. The standalone editor resizes the keep mask with
``latent_keep_mask`` and ``EditSettings.mask_resize`` (``--mask-resize``), whose default
"bilinear" keeps soft edges as the official training and inference code does (README, "Where this
pack deliberately differs from diffusers"); "nearest" gives diffusers' binary mask. The nodes
follow ComfyUI's own inpainting path unchanged, the editor follows the official code. On a mask
aligned to the latent grid the two agree exactly (tests/host/test_parity.py compares them there).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from .checks import MASK_BLUR_MAX, MASK_GROW_MAX, SettingError, check_number

MaskResize = Literal["bilinear", "nearest"]
Box = tuple[int, int, int, int]
BLUR_FULL_RES = 16  # px of blur radius computed at full resolution (more: on a reduced copy)


def binarize_edit_mask(edit_mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """edit_mask: any shape, float 0..1 -> the same shape, exactly 0 or 1 (>= threshold is 1)."""
    return (edit_mask >= threshold).to(edit_mask.dtype)


def keep_from_edit(edit_mask: torch.Tensor) -> torch.Tensor:
    """edit_mask (1 = repaint) -> keep_mask (1 = keep): keep = 1 - edit."""
    return 1.0 - edit_mask


def masked_source(source: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """source: [B, 3, H, W] in -1..1, keep_mask: [B, 1, H, W] 0..1 -> source * keep (holes = 0)."""
    return source * keep_mask


def mask_box(mask: torch.Tensor, threshold: float = 0.5) -> Box | None:
    """mask: [H, W] 0..1 -> (x0, y0, x1, y1), x1/y1 exclusive, of the values >= threshold; None
    when none is. The one bounding box of a mask: edit masks, exemplar object masks alike."""
    selected = mask >= threshold
    ys = torch.nonzero(selected.any(dim=1)).flatten()  # rows, then columns: no H x W index list
    if ys.numel() == 0:
        return None
    xs = torch.nonzero(selected.any(dim=0)).flatten()
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def latent_keep_mask(
    keep_mask: torch.Tensor, latent_hw: tuple[int, int], mode: MaskResize = "bilinear"
) -> torch.Tensor:
    """keep_mask: [B, 1, H, W] -> [B, 1, h, w] at latent size.

    "bilinear" matches the official training and inference code (soft edges); "nearest" matches
    diffusers' pipeline (binary). This pack defaults to bilinear, the training distribution.
    """
    if mode == "nearest":
        return F.interpolate(keep_mask, size=latent_hw, mode="nearest")
    if mode == "bilinear":
        return F.interpolate(keep_mask, size=latent_hw, mode="bilinear", align_corners=False)
    raise ValueError(f"mask resize mode must be 'bilinear' or 'nearest', got {mode!r}")


def unet_input(
    noisy_latent: torch.Tensor, masked_latent: torch.Tensor, keep_mask_latent: torch.Tensor
) -> torch.Tensor:
    """[B, C, h, w], [B, C, h, w], [B, 1, h, w] -> [B, 2C + 1, h, w] in Paint-by-Example's order."""
    return torch.cat([noisy_latent, masked_latent, keep_mask_latent], dim=1)


def _octagon_segments(radius: int) -> list[tuple[int, int, int]]:
    """(dy, dx, half_length) of the segments whose Minkowski sum is a regular-ish octagon with
    inradius ``radius`` (horizontal and vertical half-length a, diagonal b, a + 2b = radius and
    a = sqrt(2) b); a square for radius 1 and 2, where no octagon fits the pixel grid."""
    diagonal = min(round(radius / (2 + math.sqrt(2))), (radius - 1) // 2)
    axial = radius - 2 * diagonal
    segments = [(0, 1, axial), (1, 0, axial), (1, 1, diagonal), (1, -1, diagonal)]
    return [segment for segment in segments if segment[2] > 0]


def _or_shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x: [H, W] bool -> x | x shifted so that out[p] also holds x[p + (dy, dx)] (False beyond
    the edges)."""
    out = x.clone()
    h, w = x.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    dst_y, src_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    dst_x, src_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[dst_y, dst_x] |= x[src_y, src_x]
    return out


def _dilate_segment(x: torch.Tensor, dy: int, dx: int, half: int) -> torch.Tensor:
    """x: [H, W] bool dilated by the segment {t (dy, dx): |t| <= half}: log2(length) shifts."""
    length = 2 * half + 1
    span = 1  # out[p] = any x[p + t d] for 0 <= t < span
    out = x
    while span * 2 <= length:
        out = _or_shifted(out, span * dy, span * dx)
        span *= 2
    if span < length:  # two overlapping windows of span cover the length
        out = _or_shifted(out, (length - span) * dy, (length - span) * dx)
    centred = torch.zeros_like(out)  # shift back by half a length: the segment is centred on p
    h, w = out.shape
    sy, sx = -half * dy, -half * dx
    dst_y, src_y = slice(max(0, -sy), h - max(0, sy)), slice(max(0, sy), h - max(0, -sy))
    dst_x, src_x = slice(max(0, -sx), w - max(0, sx)), slice(max(0, sx), w - max(0, -sx))
    centred[dst_y, dst_x] = out[src_y, src_x]
    return centred


def _dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    for dy, dx, half in _octagon_segments(radius):
        x = _dilate_segment(x, dy, dx, half)
    return x


def _box_blur(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Mean over 2 radius + 1 pixels along ``dim`` of x [H, W] float (zeros beyond the edges)."""
    if radius == 0:
        return x
    pad = (radius + 1, radius) if dim == 1 else (0, 0, radius + 1, radius)
    total = F.pad(x, pad).cumsum(dim)
    size = x.shape[dim]
    width = 2 * radius + 1
    return (total.narrow(dim, width, size) - total.narrow(dim, 0, size)) / width


def _blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """x: [H, W] float -> three box blurs per axis reaching ``radius`` px in all (a Gaussian-like
    blur, sigma about radius / 3). Past BLUR_FULL_RES px it runs on a copy averaged down so that
    the radius is BLUR_FULL_RES px there, and comes back bilinearly: the cost stays that of a
    small blur, and the outline after thresholding is as smooth."""
    factor = max(1, radius // BLUR_FULL_RES)
    if factor > 1:
        h, w = x.shape
        pad_h, pad_w = -h % factor, -w % factor
        small = F.pad(x[None, None], (0, pad_w, 0, pad_h), mode="replicate")
        small = F.avg_pool2d(small, factor)[0, 0]
        small = _blur(small, round(radius / factor))
        up = F.interpolate(small[None, None], scale_factor=factor, mode="bilinear")
        return up[0, 0, :h, :w]
    radii = [radius // 3 + (1 if i < radius % 3 else 0) for i in range(3)]
    for dim in (0, 1):
        for r in radii:
            x = _box_blur(x, r, dim)
    return x


def _domain(mask: torch.Tensor, box: Box, pad: int) -> tuple[torch.Tensor, Box]:
    """mask [H, W] -> its box grown by ``pad`` on each side (pixels beyond the image repeat the
    edge's: the image goes on), and that box in image coordinates, clipped to the image."""
    h, w = mask.shape
    x0, y0, x1, y1 = box
    rows = torch.arange(y0 - pad, y1 + pad).clamp(0, h - 1)
    cols = torch.arange(x0 - pad, x1 + pad).clamp(0, w - 1)
    return mask[rows][:, cols], (x0 - pad, y0 - pad, x1 + pad, y1 + pad)


def _paste(domain: torch.Tensor, where: Box, size: tuple[int, int]) -> torch.Tensor:
    """The image-sized [H, W] bool that holds ``domain`` at ``where`` (its part inside)."""
    h, w = size
    x0, y0, x1, y1 = where
    out = torch.zeros(size, dtype=torch.bool)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    out[cy0:cy1, cx0:cx1] = domain[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return out


def _grow(edit: torch.Tensor, grow: int) -> torch.Tensor:
    """edit [H, W] bool (not empty) -> grown (or shrunk) by ``grow`` px with the octagon."""
    size = tuple(edit.shape)
    # Twice the reach: the shifts of the segment dilations pass through the outer half.
    if grow > 0:
        domain, where = _domain(edit, mask_box(edit), 2 * grow)
        edit = _paste(_dilate(domain, grow), where, size)
    elif grow < 0:  # shrinking the mask = growing what is kept; inside the mask's box only
        domain, where = _domain(edit, mask_box(edit), -2 * grow)
        edit = edit & _paste(~_dilate(~domain, -grow), where, size)  # the pad's edge is off
    return edit


def _smooth(edit: torch.Tensor, blur: int) -> torch.Tensor:
    """edit [H, W] bool (not empty) -> blurred over ``blur`` px and re-binarised at 0.5."""
    size = tuple(edit.shape)
    box = mask_box(edit)
    if blur > 0 and box is not None:
        # Blurred and thresholded at 0.5 the mask stays inside its box (a pixel outside has
        # most of its kernel outside), so the box padded by the blur's reach is all it needs.
        domain, where = _domain(edit.float(), box, blur)
        edit = _paste(_blur(domain, blur) >= 0.5, where, size)
        edit &= _paste(torch.ones(box[3] - box[1], box[2] - box[0], dtype=torch.bool), box, size)
    return edit


def grow_and_blur(
    edit_mask: torch.Tensor,
    grow: int,
    blur: int,
    names: tuple[str, str] = ("mask_grow", "mask_blur"),
) -> torch.Tensor:
    """edit_mask: [..., H, W] 0..1 (1 = repaint) -> the same shape and dtype, exactly 0 or 1.

    ``grow`` px (negative shrinks) with an octagon, the pixel grid's round-ish structuring element
    (a square for 1 or 2 px), then a Gaussian-like blur reaching ``blur`` px, re-binarised at 0.5:
    it rounds corners and removes specks and gaps narrower than about the blur. Beyond the image
    edge the image goes on (a mask touching the edge does not shrink from it). The work is done
    on the mask's box padded by |grow| (then by blur), so it costs what that area costs. Grow 0
    and blur 0 return ``edit_mask`` itself, unchanged. ``names``: the two settings as the user
    knows them, for messages (SettingError for a value out of range or a mask that vanishes).
    """
    grow_name, blur_name = names
    check_number(grow, grow_name, -MASK_GROW_MAX, MASK_GROW_MAX, integer=True)
    check_number(blur, blur_name, 0, MASK_BLUR_MAX, integer=True)
    grow, blur = int(grow), int(blur)
    if grow == 0 and blur == 0:
        return edit_mask
    h, w = edit_mask.shape[-2:]
    if abs(grow) > max(h, w):
        raise SettingError(
            grow_name,
            f"{grow} is larger than the {w}x{h} image: use at most {max(h, w)} px (the image's "
            f"longer side; growing by that already covers the whole image)",
        )
    flat = binarize_edit_mask(edit_mask.reshape(-1, h, w)) >= 0.5
    out = torch.zeros(flat.shape, dtype=torch.bool)
    for index, edit in enumerate(flat.cpu()):
        if not bool(edit.any()):
            continue
        grown = _grow(edit, grow)
        if not bool(grown.any()):
            raise SettingError(
                grow_name,
                f"{grow} removes the whole mask: the mask ({_extent(edit)}) is thinner than "
                f"that; use a smaller shrink",
            )
        out[index] = _smooth(grown, blur)
        if not bool(out[index].any()):  # what the grow left, named as the blur sees it
            shrunk = f" after {grow_name} {grow}" if grow else ""
            raise SettingError(
                blur_name,
                f"{blur} removes the whole mask: the mask{shrunk} ({_extent(grown)}) is "
                f"thinner than that; use a smaller blur",
            )
    return out.reshape(edit_mask.shape).to(device=edit_mask.device, dtype=edit_mask.dtype)


def _extent(edit: torch.Tensor) -> str:
    x0, y0, x1, y1 = mask_box(edit)
    return f"{x1 - x0}x{y1 - y0} px box"
