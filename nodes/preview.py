"""The Inpaint Sampler's ``preview`` output: per image, its processing window with the edit mask
outlined and the exemplar as the encoder saw it (``exemplar_core.preview``).

The exemplar view comes from the positive CONDITIONING's extras under ``EXEMPLAR_VIEW_KEY``
(Exemplar Encode puts it there); a condition without it (the Exemplar Mapper's, another
source's) gives the window only.
"""

from __future__ import annotations

import logging

import torch

from ..exemplar_core.crop import Window
from ..exemplar_core.preview import BACKGROUND, window_preview
from .types import EXEMPLAR_VIEW_KEY

log = logging.getLogger(__name__)


def exemplar_views(positive: list) -> torch.Tensor | None:
    """The exemplar views [V, 3, S, S] 0..1 of a positive CONDITIONING (the first item that has
    them), or None when it has none or they are not an image batch [V, S, S, 3]."""
    for item in positive:
        extras = item[1] if isinstance(item, (list, tuple)) and len(item) > 1 else None
        views = extras.get(EXEMPLAR_VIEW_KEY) if isinstance(extras, dict) else None
        if views is None:
            continue
        if (
            isinstance(views, torch.Tensor)
            and views.ndim == 4
            and views.shape[-1] == 3
            and views.shape[0] > 0
            and torch.isfinite(views).all()
        ):
            return views.detach().cpu().float().permute(0, 3, 1, 2).clamp(0, 1)
        log.warning(
            "the positive conditioning's %s is not an image batch [B, S, S, 3]: the preview "
            "shows the window only",
            EXEMPLAR_VIEW_KEY,
        )
        return None
    return None


def view_for(views: torch.Tensor | None, index: int, condition_batch: int) -> torch.Tensor | None:
    """The view [3, S, S'] of image ``index``: the view of its own condition when there is one
    per condition (N conditions, or 1 for every image); all views side by side when several
    exemplars were combined into one condition (mean, concat tokens); else None."""
    if views is None:
        return None
    if views.shape[0] == condition_batch:
        return views[min(index, condition_batch - 1)]
    if condition_batch == 1:
        return torch.cat(list(views), dim=-1)
    return None


def sampler_previews(windows: list[Window], positive: list, condition_batch: int) -> torch.Tensor:
    """One preview per edited image, [N, H, W, 3] float 0..1 (ComfyUI's IMAGE).

    windows: each image's processing window (``crop.prepare_window``); positive: the sampler's
    positive CONDITIONING, whose batch is ``condition_batch`` (N or 1). Previews of different
    sizes are padded to the largest height and width with the preview's background grey at
    their right and bottom, never resized: each keeps its pixels at its top left.
    """
    views = exemplar_views(positive)
    previews = [
        window_preview(w.image, w.edit_mask, view_for(views, i, condition_batch))
        for i, w in enumerate(windows)
    ]
    height = max(p.shape[-2] for p in previews)
    width = max(p.shape[-1] for p in previews)
    batch = torch.full((len(previews), height, width, 3), BACKGROUND)
    for i, preview in enumerate(previews):
        h, w = preview.shape[-2:]
        batch[i, :h, :w] = preview[0].permute(1, 2, 0)
    return batch
