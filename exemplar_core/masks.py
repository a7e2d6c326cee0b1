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

from typing import Literal

import torch
import torch.nn.functional as F

MaskResize = Literal["bilinear", "nearest"]
Box = tuple[int, int, int, int]


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
    ys, xs = torch.nonzero(mask >= threshold, as_tuple=True)
    if ys.numel() == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


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
