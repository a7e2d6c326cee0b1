"""Colour matching of a generated window to its source, measured on the kept (unedited) pixels."""

from __future__ import annotations

import torch


def match_color(
    generated: torch.Tensor, source: torch.Tensor, keep_mask: torch.Tensor, eps: float = 1e-4
) -> torch.Tensor:
    """Shift and scale each channel of ``generated`` so its kept pixels match the source's.

    generated, source: [B, 3, H, W] 0..1 (same size); keep_mask: [B, 1, H, W] 1 = keep.
    The VAE round trip drifts colours slightly; this removes the drift everywhere in the window,
    including the repainted area, so the edit sits in the scene's colours. Images whose kept area
    is under 1% of the window are returned unchanged (nothing reliable to measure).
    """
    keep = (keep_mask >= 0.5).to(generated.dtype)
    count = keep.sum(dim=(2, 3), keepdim=True)
    total = keep.shape[-1] * keep.shape[-2]
    out = []
    for i in range(generated.shape[0]):
        if float(count[i]) < 0.01 * total:
            out.append(generated[i : i + 1])
            continue
        k, n = keep[i : i + 1], count[i : i + 1]
        g_mean = (generated[i : i + 1] * k).sum(dim=(2, 3), keepdim=True) / n
        s_mean = (source[i : i + 1] * k).sum(dim=(2, 3), keepdim=True) / n
        g_std = (
            ((generated[i : i + 1] - g_mean) ** 2 * k).sum(dim=(2, 3), keepdim=True) / n
        ).sqrt()
        s_std = (((source[i : i + 1] - s_mean) ** 2 * k).sum(dim=(2, 3), keepdim=True) / n).sqrt()
        gain = (s_std / g_std.clamp_min(eps)).clamp(0.5, 2.0)
        out.append((generated[i : i + 1] - g_mean) * gain + s_mean)
    return torch.cat(out).clamp(0, 1)
