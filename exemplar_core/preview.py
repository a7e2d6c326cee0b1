"""The edit preview: the processing window with the edit mask outlined, and beside it the exemplar
exactly as the encoder saw it, so a user sees at once why an edit went wrong (a window too
tight, a mask off the object, an exemplar framed badly).

Layout (``preview_layout``): the window at the top left, unscaled; a gap; the exemplar view in a
frame, upscaled by a whole number (nearest: every encoder pixel becomes a k x k block, nothing is
resampled), vertically centred. The canvas is as tall as the taller of the two; the rest is
``BACKGROUND``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Inner contour (edit pixels next to a kept one) in magenta, outer contour (kept pixels next to
# an edit one) in black: one of the two stands out on any picture.
OUTLINE_INNER = (1.0, 0.0, 1.0)
OUTLINE_OUTER = (0.0, 0.0, 0.0)
TINT = OUTLINE_INNER
TINT_STRENGTH = 0.15  # a light tint of the edit area: its pixels stay readable
VIEW_FRAME = (0.0, 1.0, 1.0)  # cyan frame around the encoder's view
FRAME = 2  # px, the view's frame
GAP = 4  # px between the window and the view's frame
BACKGROUND = 0.2  # grey of the canvas where neither the window nor the view is


@dataclass(frozen=True)
class Box:
    """A rectangle of the preview, end-exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int


@dataclass(frozen=True)
class PreviewLayout:
    """Where the parts of a preview lie. ``view`` is None when there is no exemplar view."""

    height: int
    width: int
    window: Box
    view: Box | None
    view_scale: int  # each encoder pixel is view_scale x view_scale preview pixels


def preview_layout(
    window_hw: tuple[int, int], view_hw: tuple[int, int] | None = None
) -> PreviewLayout:
    """The layout of a preview of a window ``(h, w)`` and an exemplar view ``(Sh, Sw)``: the view
    is upscaled by k = max(1, round(h / Sh)) (2 for the published model's 224 px view beside a 512
    window, 2 for the mini model's 32 px view beside a 64 window)."""
    h, w = window_hw
    if view_hw is None:
        return PreviewLayout(h, w, Box(0, 0, w, h), None, 1)
    sh, sw = view_hw
    scale = max(1, round(h / sh))
    framed_h, framed_w = sh * scale + 2 * FRAME, sw * scale + 2 * FRAME
    height = max(h, framed_h)
    top = (height - framed_h) // 2 + FRAME
    left = w + GAP + FRAME
    view = Box(left, top, left + sw * scale, top + sh * scale)
    return PreviewLayout(height, w + GAP + framed_w, Box(0, 0, w, h), view, scale)


def mask_contours(edit_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """edit_mask: [B, 1, h, w] exactly 0 or 1 -> (inner, outer) bool [B, 1, h, w]: edit pixels
    with a kept 8-neighbour, kept pixels with an edit 8-neighbour. The window's border is no
    boundary (the mask may run on beyond it)."""
    edit = edit_mask > 0.5
    padded = F.pad(edit_mask.float(), (1, 1, 1, 1), mode="replicate")
    any_edit = F.max_pool2d(padded, 3, stride=1) > 0.5
    all_edit = -F.max_pool2d(-padded, 3, stride=1) > 0.5
    return edit & ~all_edit, ~edit & any_edit


def _colour(rgb: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rgb, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def outline_window(window_image: torch.Tensor, edit_mask: torch.Tensor) -> torch.Tensor:
    """window_image [1, 3, h, w] 0..1, edit_mask [1, 1, h, w] binary -> [1, 3, h, w]: the edit
    area lightly tinted, its 2 px contour drawn (one pixel inside, one outside the mask)."""
    image = window_image.float().clamp(0, 1)
    edit = (edit_mask > 0.5).to(image.dtype)
    inner, outer = mask_contours(edit)
    tint = _colour(TINT, image)
    out = image * (1 - TINT_STRENGTH * edit) + tint * TINT_STRENGTH * edit
    out = torch.where(inner, _colour(OUTLINE_INNER, image), out)
    return torch.where(outer, _colour(OUTLINE_OUTER, image), out)


def window_preview(
    window_image: torch.Tensor,
    edit_mask: torch.Tensor,
    exemplar_view: torch.Tensor | None = None,
) -> torch.Tensor:
    """The preview of one edit: [1, 3, H, W] float 0..1, laid out by ``preview_layout``.

    window_image: [1, 3, h, w] 0..1, the processing window as the model saw it; edit_mask:
    [1, 1, h, w] binary, 1 = repaint; exemplar_view: [3, Sh, Sw] 0..1, the exemplar as the encoder
    saw it (S x S; several exemplars of one condition side by side), or None: the window only.
    """
    if window_image.ndim != 4 or window_image.shape[:2] != (1, 3):
        raise ValueError(f"window_image must be [1, 3, h, w], got {list(window_image.shape)}")
    if edit_mask.shape != (1, 1, *window_image.shape[-2:]):
        raise ValueError(
            f"edit_mask must be [1, 1, h, w] of the window's size "
            f"{list(window_image.shape[-2:])}, got {list(edit_mask.shape)}"
        )
    if exemplar_view is not None and (exemplar_view.ndim != 3 or exemplar_view.shape[0] != 3):
        raise ValueError(f"exemplar_view must be [3, S, S], got {list(exemplar_view.shape)}")
    window = outline_window(window_image.cpu(), edit_mask.cpu())
    view_hw = None if exemplar_view is None else tuple(exemplar_view.shape[-2:])
    layout = preview_layout(tuple(window.shape[-2:]), view_hw)
    if layout.view is None:
        return window
    canvas = torch.full((1, 3, layout.height, layout.width), BACKGROUND, dtype=window.dtype)
    b = layout.window
    canvas[..., b.y0 : b.y1, b.x0 : b.x1] = window
    v = layout.view
    canvas[..., v.y0 - FRAME : v.y1 + FRAME, v.x0 - FRAME : v.x1 + FRAME] = _colour(
        VIEW_FRAME, canvas
    )
    view = exemplar_view.detach().cpu().to(window.dtype).clamp(0, 1)
    scale = layout.view_scale
    canvas[..., v.y0 : v.y1, v.x0 : v.x1] = view.repeat_interleave(scale, -2).repeat_interleave(
        scale, -1
    )
    return canvas
