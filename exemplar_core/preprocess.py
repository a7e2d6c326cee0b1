"""Exemplar preprocessing: optional object crop, resize to the encoder's input, normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from .config import EncoderConfig
from .masks import mask_box

ResizeMode = Literal["squash", "center_crop"]
MIN_EXEMPLAR_SIDE = 16


class ExemplarError(ValueError):
    """An exemplar image or mask that cannot be used."""


def to_bchw(images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] (ComfyUI) or [B, 3, H, W] or [3, H, W] float 0..1 -> [B, 3, H, W] float."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ExemplarError(
            f"exemplar must be an image batch [B, H, W, 3], got {list(images.shape)}"
        )
    if images.shape[-1] in (3, 4) and images.shape[1] not in (3, 4):
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] == 4:  # RGBA: drop alpha (use the exemplar mask to select the object)
        images = images[:, :3]
    if images.shape[1] != 3:
        raise ExemplarError(f"exemplar must have 3 colour channels, got shape {list(images.shape)}")
    return images.float()


def crop_to_object(
    image: torch.Tensor, object_mask: torch.Tensor, fill: float = 1.0
) -> torch.Tensor:
    """image: [3, H, W] 0..1, object_mask: [H, W] 1 = object -> [3, h, w], the object's box with
    the background filled with ``fill`` (1.0 = white, as segmented exemplars usually are)."""
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
    x0, y0, x1, y1 = box
    m = object_mask.clamp(0, 1)[None]
    filled = image * m + fill * (1 - m)
    return filled[:, y0:y1, x0:x1]


def resize_for_encoder(image: torch.Tensor, size: int, mode: ResizeMode = "squash") -> torch.Tensor:
    """image: [B, 3, H, W] 0..1 -> [B, 3, size, size].

    "squash" is the official training and inference behaviour (aspect not preserved); "center_crop"
    is diffusers' (shortest side to ``size``, then the centre square: wide exemplars lose
    their sides).
    """
    if mode == "squash":
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
        raise ExemplarError(f"resize mode must be 'squash' or 'center_crop', got {mode!r}")
    return out.clamp(0, 1)


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """image: [..., 3, H, W] in 0..1 -> CLIP-normalised, ``(image - mean) / std`` per channel.

    The one CLIP normalisation: the exemplar encoder's input here, the trainer's references
    (``train.augment``) alike. ``mean``/``std`` are the encoder config's (``EncoderConfig``).
    """
    mean_t = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean_t) / std_t


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``normalize``'s inverse: CLIP-normalised [..., 3, H, W] -> 0..1 (clamped), the pixels the
    encoder saw (float rounding aside): x * std + mean = (x - (-mean / std)) / (1 / std)."""
    shift = [-m / s for m, s in zip(mean, std, strict=True)]
    return normalize(image, shift, [1 / s for s in std]).clamp(0, 1)


def preprocess_exemplar(
    images: torch.Tensor,
    config: EncoderConfig,
    exemplar_mask: torch.Tensor | None = None,
    mode: ResizeMode = "squash",
    fill: float = 1.0,
) -> torch.Tensor:
    """Exemplar images -> encoder input ``[B, 3, S, S]``, CLIP-normalised (S = config.image_size).

    images: [B, H, W, 3] (ComfyUI) or [B, 3, H, W], float 0..1.
    exemplar_mask: optional [B, H, W] or [H, W] (1 = object; one mask serves every image): crops to
    the object's box and fills the background with ``fill``.
    """
    batch = to_bchw(images)
    if not torch.isfinite(batch).all():
        raise ExemplarError("exemplar has NaN or infinite pixels: check the node that produced it")
    h, w = batch.shape[-2:]
    if min(h, w) < MIN_EXEMPLAR_SIDE:
        raise ExemplarError(
            f"exemplar is {w}x{h} px; at least {MIN_EXEMPLAR_SIDE} px per side is needed "
            f"(the encoder sees {config.image_size}x{config.image_size})"
        )
    batch = batch.clamp(0, 1)
    if exemplar_mask is None:
        return normalize(
            resize_for_encoder(batch, config.image_size, mode), config.mean, config.std
        )
    masks = exemplar_mask.float()
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[0] not in (1, batch.shape[0]):
        raise ExemplarError(
            f"exemplar mask batch {list(masks.shape)} does not fit {batch.shape[0]} exemplar(s): "
            f"give one mask or one per exemplar"
        )
    out = []
    for i in range(batch.shape[0]):
        crop = crop_to_object(batch[i], masks[min(i, masks.shape[0] - 1)], fill)
        if min(crop.shape[-2:]) < MIN_EXEMPLAR_SIDE:
            raise ExemplarError(
                f"the object in exemplar {i} is only {crop.shape[-1]}x{crop.shape[-2]} px; "
                f"at least {MIN_EXEMPLAR_SIDE} px per side is needed"
            )
        out.append(resize_for_encoder(crop[None], config.image_size, mode))
    return normalize(torch.cat(out), config.mean, config.std)
