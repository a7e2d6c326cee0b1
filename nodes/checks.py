"""Input validation shared by the nodes: every message says what was wrong and what to do.

Errors raised here reach ComfyUI's error report as the node's exception message; the server keeps
running and the next prompt works.
"""

from __future__ import annotations

import torch


class PaintByExampleInputError(ValueError):
    """An input a Paint-by-Example node cannot use; the message explains the fix."""


def check_image(image: object, what: str) -> torch.Tensor:
    """image: IMAGE [B, H, W, 3] float 0..1; returns it, or raises with a clear message."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise PaintByExampleInputError(
            f"{what} must be an IMAGE batch [B, H, W, 3], got {shape}: connect an image output"
        )
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise PaintByExampleInputError(f"{what} is empty (shape {list(image.shape)})")
    if not torch.isfinite(image).all():
        raise PaintByExampleInputError(
            f"{what} has NaN or infinite pixels: check the node that produced it"
        )
    return image[..., :3]


def check_mask(mask: object, what: str) -> torch.Tensor:
    """mask: MASK [B, H, W] or [H, W] float 0..1 -> [B, H, W], or raises."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise PaintByExampleInputError(
            f"{what} must be a MASK [B, H, W] (1 = edit), got {shape}: connect a mask output"
        )
    mask = mask if mask.ndim == 3 else mask[None]
    if not torch.isfinite(mask).all():
        raise PaintByExampleInputError(
            f"{what} has NaN or infinite values: check the node that produced it"
        )
    return mask


def check_batch(count: int, images: int, what: str) -> None:
    """N images take N or 1 of ``what``; anything else is an error."""
    if count not in (1, images):
        raise PaintByExampleInputError(
            f"{count} {what} for {images} image(s): give one {what.rstrip('s')} for all images or "
            f"exactly one per image"
        )


def check_same_size(mask: torch.Tensor, image: torch.Tensor, what: str = "mask") -> None:
    """mask [B, H, W] and image [B, H, W, C] must share H and W."""
    mh, mw = mask.shape[-2:]
    ih, iw = image.shape[1:3]
    if (mh, mw) != (ih, iw):
        raise PaintByExampleInputError(
            f"{what} is {mw}x{mh} but the image is {iw}x{ih}: give a mask of the image's size "
            f"(e.g. from the same Load Image node, or scale it with ImageScale/ResizeMask)"
        )


def check_edit_mask_content(edit_mask: torch.Tensor, index: int) -> None:
    """edit_mask [H, W] 1 = edit: refuse an empty or a full mask (binarised at 0.5)."""
    selected = edit_mask >= 0.5
    if not bool(selected.any()):
        raise PaintByExampleInputError(
            f"mask {index} is empty (no pixel >= 0.5): paint the area to replace in white "
            f"(MASK value 1 = edit); LoadImage makes transparent pixels the mask"
        )
    if bool(selected.all()):
        raise PaintByExampleInputError(
            f"mask {index} covers the whole image: Paint-by-Example repaints the masked area "
            f"from its surroundings, so leave part of the image unmasked"
        )


def check_finite(value: float, what: str) -> None:
    if value != value or value in (float("inf"), float("-inf")):
        raise PaintByExampleInputError(f"{what} must be a finite number, got {value}")
