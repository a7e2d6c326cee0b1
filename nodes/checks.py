"""Input validation shared by the nodes: every message says what was wrong and what to do.

Errors raised here reach ComfyUI's error report as the node's exception message; the server keeps
running and the next prompt works.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from comfy_api.latest import io

from ..exemplar_core.checks import NonFiniteOutputError, SettingError, check_number, check_output


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


def check_widgets(node: type[io.ComfyNode], values: Mapping[str, object]) -> None:
    """Every number and choice input of ``node`` against its declaration.

    ComfyUI 0.3.64 lets NaN through its min/max check (``"nan"`` and bare ``NaN`` in a prompt
    convert to a float that compares false), does not check a V3 node's choices, and never checks
    a value that arrives through a link; this does all three, naming the input.
    """
    for spec in node.define_schema().inputs:
        if spec.id not in values or values[spec.id] is None:
            continue
        value = values[spec.id]
        if isinstance(spec, (io.Float.Input, io.Int.Input)):
            try:
                check_number(value, spec.id, spec.min, spec.max, isinstance(spec, io.Int.Input))
            except SettingError as err:
                raise PaintByExampleInputError(str(err)) from None
        elif isinstance(spec, io.Combo.Input) and spec.options and value not in spec.options:
            choices = ", ".join(map(str, spec.options))
            raise PaintByExampleInputError(f"{spec.id} {value!r} is not one of: {choices}")


def check_model_output(output: torch.Tensor, part: str, source: str, module=None) -> None:
    """``check_output`` for a node: a NaN/inf output of a model part fails the node."""
    try:
        check_output(output, part, source, module, dtype_hint="fp32 (weight_dtype fp32)")
    except NonFiniteOutputError as err:
        raise PaintByExampleInputError(str(err)) from None
