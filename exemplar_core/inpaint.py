"""Deprecated, use ``exemplar_core.masks``: this module only re-exports it for one release.

The mask conventions (polarity, binarising, the latent keep mask, the UNet input layout) live in
``exemplar_core.masks``; project code imports them from there.
"""

from __future__ import annotations

import warnings

from .masks import (
    MaskResize,
    binarize_edit_mask,
    keep_from_edit,
    latent_keep_mask,
    masked_source,
    unet_input,
)

warnings.warn(
    "exemplar_core.inpaint is deprecated and goes in the next release: use exemplar_core.masks",
    DeprecationWarning,
    stacklevel=2,
)


__all__ = [
    "MaskResize",
    "binarize_edit_mask",
    "keep_from_edit",
    "latent_keep_mask",
    "masked_source",
    "unet_input",
]
