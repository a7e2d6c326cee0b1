"""Exemplar preprocessing: optional object mask (or the image's alpha), framing, resize to the
encoder's input, normalisation.

Framing decides which part of the exemplar the encoder sees (``frame_exemplar``): the object's
box from the exemplar mask (the whole image without one), grown by ``expand`` around its centre,
then fitted to the encoder's square input by ``mode``:

- "squash": the box resized to the square, aspect not kept (the official training and inference
  behaviour, and the default);
- "center_crop": shortest side to the square, then the centre (diffusers' behaviour);
- "pad_to_square": the box padded to a square with the background fill, then resized, so the
  object keeps its aspect (Insert Anything's framing, with ``expand`` as its expansion ratio).

Pixels of a grown box that fall outside the image, and the background outside the object mask,
are the background ``fill`` (1.0 = white, as segmented exemplars usually are).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from .checks import EXEMPLAR_EXPAND_MAX, SettingError, check_number
from .config import EncoderConfig
from .masks import Box, mask_box

ResizeMode = Literal["squash", "center_crop", "pad_to_square"]
MIN_EXEMPLAR_SIDE = 16

log = logging.getLogger(__name__)


class ExemplarError(ValueError):
    """An exemplar image or mask that cannot be used."""


def split_alpha(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, H, W, 3|4] (ComfyUI) or [B, 3|4, H, W] or [3|4, H, W] float 0..1 -> colours
    [B, 3, H, W] float and alpha [B, H, W] (1 = opaque), None for a 3-channel image."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ExemplarError(
            f"exemplar must be an image batch [B, H, W, 3], got {list(images.shape)}"
        )
    if images.shape[-1] in (3, 4) and images.shape[1] not in (3, 4):
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] not in (3, 4):
        raise ExemplarError(
            f"exemplar must have 3 colour channels (or 4 with alpha), got shape "
            f"{list(images.shape)}"
        )
    alpha = images[:, 3].float() if images.shape[1] == 4 else None
    return images[:, :3].float(), alpha


def alpha_object_mask(alpha: torch.Tensor) -> torch.Tensor | None:
    """alpha: [B, H, W] 0..1 (1 = opaque) -> object mask [B, H, W] (1 = object), or None when
    no exemplar's alpha marks an object.

    A fully opaque alpha is no mask (the whole image is the exemplar, as without alpha); nor is
    one with no pixel of at least 0.5, where the mask would mark nothing (fully transparent or
    faint all over: a warning, its colours are used as they are). In a batch that mixes them,
    such an exemplar gets an all-object mask, which frames it as the whole image."""
    opaque = (alpha >= 1).flatten(1).all(dim=1)
    clear = (alpha < 0.5).flatten(1).all(dim=1)  # the object mask's threshold: nothing marked
    for i in torch.nonzero(clear).flatten().tolist():
        peak = float(alpha[i].max())
        state = "fully transparent" if peak <= 0 else f"transparent (alpha at most {peak:.2f})"
        log.warning(
            "exemplar %d is %s: its alpha marks no object (opaque = alpha 0.5 or more), so it is "
            "ignored and the whole image is used with its colours as they are; save the object "
            "opaque on a transparent background",
            i,
            state,
        )
    if bool((opaque | clear).all()):
        return None
    masks = alpha.clamp(0, 1).clone()
    masks[opaque | clear] = 1.0
    return masks


def mask_looks_inverted(object_mask: torch.Tensor) -> bool:
    """object_mask: [H, W] 0..1 (1 = object). True when it covers the whole border but not the
    centre: most likely a background mask (LoadImage's MASK of a cut-out marks the transparent
    background with 1). A hint for a warning, never acted on."""
    on = object_mask >= 0.5
    h, w = on.shape
    border = torch.cat([on[0], on[-1], on[:, 0], on[:, -1]])
    return bool(border.all()) and not bool(on[h // 2, w // 2])


def framed_box(box: Box, expand: float = 1.0, square: bool = False) -> Box:
    """The box (x0, y0, x1, y1), x1/y1 exclusive, grown ``expand`` times around its centre, then
    (``square``) padded to a square on its shorter side. May reach beyond the image."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    new_w, new_h = max(w, round(w * expand)), max(h, round(h * expand))
    if square:
        new_w = new_h = max(new_w, new_h)
    left, top = x0 - (new_w - w) // 2, y0 - (new_h - h) // 2
    return left, top, left + new_w, top + new_h


def crop_region(images: torch.Tensor, box: Box, fill: float = 1.0) -> torch.Tensor:
    """images: [B, C, H, W] -> [B, C, y1 - y0, x1 - x0], the box's pixels; the part of the box
    beyond the image is ``fill``."""
    x0, y0, x1, y1 = box
    h, w = images.shape[-2:]
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return images[..., y0:y1, x0:x1]
    out = images.new_full((*images.shape[:-2], y1 - y0, x1 - x0), fill)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[..., sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = images[..., sy0:sy1, sx0:sx1]
    return out


def crop_to_object(
    image: torch.Tensor,
    object_mask: torch.Tensor,
    fill: float = 1.0,
    expand: float = 1.0,
    square: bool = False,
) -> torch.Tensor:
    """image: [3, H, W] 0..1, object_mask: [H, W] 1 = object -> [3, h, w], the object's box
    (``framed_box``: grown by ``expand``, padded to a square if ``square``) with the background
    filled with ``fill``."""
    if object_mask.shape != image.shape[-2:]:
        raise ExemplarError(
            f"exemplar mask is {object_mask.shape[-1]}x{object_mask.shape[-2]} but the exemplar is "
            f"{image.shape[-1]}x{image.shape[-2]}: give a mask of the same size"
        )
    box = mask_box(object_mask)
    if box is None:
        raise ExemplarError(
            "exemplar mask is empty: mark the object with 1 (white) or leave it out"
        )
    m = object_mask.clamp(0, 1)[None]
    filled = image * m + fill * (1 - m)
    return crop_region(filled, framed_box(box, expand, square), fill)


def resize_for_encoder(image: torch.Tensor, size: int, mode: ResizeMode = "squash") -> torch.Tensor:
    """image: [B, 3, H, W] 0..1 -> [B, 3, size, size].

    "squash" is the official training and inference behaviour (aspect not preserved); "center_crop"
    is diffusers' (shortest side to ``size``, then the centre square: wide exemplars lose
    their sides); "pad_to_square" pads nothing here (``frame_exemplar`` has made the image
    square) and resizes as squash does.
    """
    if mode in ("squash", "pad_to_square"):
        out = F.interpolate(
            image, size=(size, size), mode="bicubic", align_corners=False, antialias=True
        )
    elif mode == "center_crop":
        h, w = image.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        out = F.interpolate(
            image, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True
        )
        top, left = (nh - size) // 2, (nw - size) // 2
        out = out[..., top : top + size, left : left + size]
    else:
        check_mode(mode)
    return out.clamp(0, 1)


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """image: [..., 3, H, W] in 0..1 -> CLIP-normalised, ``(image - mean) / std`` per channel.

    The one CLIP normalisation: the exemplar encoder's input here, the trainer's references
    (``train.augment``) alike. ``mean``/``std`` are the encoder config's (``EncoderConfig``).
    """
    mean_t = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean_t) / std_t


def check_mode(mode: object) -> None:
    """Refuse a resize mode that is not one of ``ResizeMode``."""
    if mode not in get_args(ResizeMode):
        raise ExemplarError(
            f"resize mode must be one of {', '.join(get_args(ResizeMode))}, got {mode!r}"
        )


def check_expand(expand: object, name: str = "expand") -> None:
    """Refuse an expansion ratio that is not a finite number in 1..EXEMPLAR_EXPAND_MAX."""
    try:
        check_number(expand, name, 1.0, EXEMPLAR_EXPAND_MAX)
    except SettingError as err:
        raise ExemplarError(f"{err} (1 = the object's tight box)") from None


def frame_exemplar(
    images: torch.Tensor,
    config: EncoderConfig,
    exemplar_mask: torch.Tensor | None = None,
    mode: ResizeMode = "squash",
    fill: float = 1.0,
    expand: float = 1.0,
) -> torch.Tensor:
    """Exemplar images -> ``[B, 3, S, S]`` float 0..1, what the encoder sees before
    normalisation (S = config.image_size).

    images: [B, H, W, 3|4] (ComfyUI) or [B, 3|4, H, W], float 0..1; a 4th channel is alpha
    (1 = opaque) and serves as the exemplar mask when ``exemplar_mask`` is None (an explicit
    mask wins over the alpha).
    exemplar_mask: optional [B, H, W] or [H, W] 0..1 (1 = object; one mask serves every image):
    frames the object's box and fills the background with ``fill``.
    expand: 1..EXEMPLAR_EXPAND_MAX, the box (the whole image without a mask) grows this many
    times around its centre; pixels beyond the image are ``fill``. mode: see the module doc.
    """
    check_expand(expand)
    check_mode(mode)
    batch, alpha = split_alpha(images)
    if not torch.isfinite(batch).all() or (alpha is not None and not torch.isfinite(alpha).all()):
        raise ExemplarError("exemplar has NaN or infinite pixels: check the node that produced it")
    h, w = batch.shape[-2:]
    if min(h, w) < MIN_EXEMPLAR_SIDE:
        raise ExemplarError(
            f"exemplar is {w}x{h} px; at least {MIN_EXEMPLAR_SIDE} px per side is needed "
            f"(the encoder sees {config.image_size}x{config.image_size})"
        )
    batch = batch.clamp(0, 1)
    if exemplar_mask is None and alpha is not None:
        exemplar_mask = alpha_object_mask(alpha)
    square = mode == "pad_to_square"
    if exemplar_mask is None:
        framed = crop_region(batch, framed_box((0, 0, w, h), expand, square), fill)
        return resize_for_encoder(framed, config.image_size, mode)
    masks = exemplar_mask.float()
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[0] not in (1, batch.shape[0]):
        raise ExemplarError(
            f"exemplar mask batch {list(masks.shape)} does not fit {batch.shape[0]} exemplar(s): "
            f"give one mask or one per exemplar"
        )
    if not torch.isfinite(masks).all():
        raise ExemplarError("exemplar mask has NaN or infinite values: check where it comes from")
    out = []
    for i in range(batch.shape[0]):
        mask = masks[min(i, masks.shape[0] - 1)]
        crop = crop_to_object(batch[i], mask, fill, expand, square)
        if min(crop.shape[-2:]) < MIN_EXEMPLAR_SIDE:
            raise ExemplarError(
                f"the object in exemplar {i} is only {crop.shape[-1]}x{crop.shape[-2]} px; "
                f"at least {MIN_EXEMPLAR_SIDE} px per side is needed"
            )
        out.append(resize_for_encoder(crop[None], config.image_size, mode))
    return torch.cat(out)


def preprocess_exemplar(
    images: torch.Tensor,
    config: EncoderConfig,
    exemplar_mask: torch.Tensor | None = None,
    mode: ResizeMode = "squash",
    fill: float = 1.0,
    expand: float = 1.0,
) -> torch.Tensor:
    """Exemplar images -> encoder input ``[B, 3, S, S]``, CLIP-normalised: ``normalize`` of
    ``frame_exemplar`` (same arguments)."""
    framed = frame_exemplar(images, config, exemplar_mask, mode, fill, expand)
    return normalize(framed, config.mean, config.std)
