"""Paint-by-Example's inpainting conventions, in one place.

User masks are *edit* masks: 1 (white) = repaint. The UNet sees the *keep* mask (1 = keep),
keep = 1 - edit, and the masked image is the source times keep (holes become 0, i.e. mid-grey
in -1..1). The UNet input is ``[noisy latent, masked-image latent, keep mask]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

MaskResize = Literal["bilinear", "nearest"]


def binarize_edit_mask(edit_mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """edit_mask: any shape, float 0..1 -> the same shape, exactly 0 or 1 (>= threshold is 1)."""
    return (edit_mask >= threshold).to(edit_mask.dtype)


def keep_from_edit(edit_mask: torch.Tensor) -> torch.Tensor:
    """edit_mask (1 = repaint) -> keep_mask (1 = keep): keep = 1 - edit."""
    return 1.0 - edit_mask


def masked_source(source: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """source: [B, 3, H, W] in -1..1, keep_mask: [B, 1, H, W] 0..1 -> source * keep (holes = 0)."""
    return source * keep_mask


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
