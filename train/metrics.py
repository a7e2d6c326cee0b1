"""Metrics: exemplar fidelity on synthetic cases, background preservation, CLIP score and FID.

Synthetic fidelity works on images whose exemplar is an object on a plain light background (see
``train.synthetic``): the object's colour and silhouette are measured in the exemplar and in the
generated region, and compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from exemplar_core.masks import mask_box

EXEMPLAR_BACKGROUND = (235, 235, 235)


@dataclass(frozen=True)
class Fidelity:
    color_error: float  # Euclidean RGB distance in 0..1 units between object mean colours
    shape_iou: float  # IoU of the box-normalised silhouettes (1 = same shape)
    foreground_fraction: float  # share of the mask the generated object covers


def exemplar_object(
    exemplar: np.ndarray, threshold: float = 40.0, near_threshold: float = 8.0
) -> np.ndarray:
    """exemplar: [H, W, 3] uint8 on the synthetic light background -> bool object mask [H, W].

    An object close to the background's colour (a solid white one is 17 away) has no pixel past
    ``threshold``; it is then told apart with ``near_threshold`` (the background is flat)."""
    distance = np.linalg.norm(exemplar.astype(np.float32) - np.array(EXEMPLAR_BACKGROUND), axis=-1)
    mask = distance > threshold
    if mask.sum() < 0.01 * mask.size:
        mask = distance > near_threshold
    if not mask.any():
        raise ValueError(
            "the exemplar has no object pixels: synthetic fidelity expects an object on the plain "
            f"{EXEMPLAR_BACKGROUND} background of train.synthetic exemplars"
        )
    return mask


def generated_object(
    region: np.ndarray, context: np.ndarray, threshold: float = 40.0, support: float = 0.05
) -> np.ndarray:
    """region: [h, w, 3] uint8 inside the mask box; context: [N, 3] pixels around it (kept area).
    -> bool mask of the pixels unlike the surrounding scene (the painted object).

    A pixel belongs to the scene when at least ``support`` of the context pixels are within
    ``threshold`` of it: robust to textured backgrounds and to a few stray context pixels.
    """
    scene = context.astype(np.float32).reshape(-1, 3)
    scene = scene[:: max(1, scene.shape[0] // 512)]
    pixels = region.astype(np.float32).reshape(-1, 1, 3)
    close = (np.linalg.norm(pixels - scene[None], axis=-1) <= threshold).mean(axis=1)
    return (close < support).reshape(region.shape[:2])


def _silhouette(mask: np.ndarray, size: int = 32) -> np.ndarray:
    level = torch.from_numpy(mask.astype(np.float32))
    box = mask_box(level)
    if box is None:
        return np.zeros((size, size), dtype=bool)
    x0, y0, x1, y1 = box
    t = level[y0:y1, x0:x1].contiguous()[None, None]
    return (
        F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        > 0.5
    )


def silhouette_iou(a: np.ndarray, b: np.ndarray, max_angle: int = 45, step: int = 5) -> float:
    """Pose-tolerant IoU of two bool masks: each is cropped to its box and resized to a common
    size, and ``b`` is tried at rotations within +-max_angle degrees (the edit re-poses the
    object); the best IoU counts."""
    from PIL import Image

    sa = _silhouette(a)
    best = 0.0
    image = Image.fromarray(b.astype(np.uint8) * 255)
    for angle in range(-max_angle, max_angle + 1, step):
        rotated = np.asarray(image.rotate(angle, resample=Image.BILINEAR, expand=True)) > 127
        sb = _silhouette(rotated)
        union = np.logical_or(sa, sb).sum()
        if union:
            best = max(best, float(np.logical_and(sa, sb).sum() / union))
    return best


def synthetic_fidelity(
    result: np.ndarray,
    exemplar: np.ndarray,
    box: tuple[int, int, int, int],
    ring: int = 6,
    exemplar_mask: np.ndarray | None = None,
) -> Fidelity:
    """result: [H, W, 3] uint8 edited scene; exemplar: [h, w, 3] uint8; box: the mask's (x0, y0, x1,
    y1). Compares the object painted in the box with the exemplar's object: ``exemplar_mask``
    (bool [h, w]) where it is known, as the synthetic cases give it, else the pixels unlike the
    exemplar's background (``exemplar_object``; that misses the body of a white object, 10 units
    from the background, and keeps only its texture)."""
    x0, y0, x1, y1 = box
    height, width = result.shape[:2]
    region = result[y0:y1, x0:x1]
    outer = result[
        max(0, y0 - ring) : min(height, y1 + ring), max(0, x0 - ring) : min(width, x1 + ring)
    ]
    keep = np.ones(outer.shape[:2], dtype=bool)
    keep[
        y0 - max(0, y0 - ring) : y0 - max(0, y0 - ring) + (y1 - y0),
        x0 - max(0, x0 - ring) : x0 - max(0, x0 - ring) + (x1 - x0),
    ] = False
    context = outer[keep]
    painted = generated_object(region, context)
    if painted.sum() < 0.02 * painted.size:  # nothing stands out: judge the whole region
        painted = np.ones_like(painted)
    if exemplar_mask is not None:
        if exemplar_mask.shape != exemplar.shape[:2] or not exemplar_mask.any():
            raise ValueError(
                f"exemplar_mask must be a non-empty bool mask of the exemplar's size "
                f"{exemplar.shape[:2]}, got shape {exemplar_mask.shape}"
            )
        target = exemplar_mask.astype(bool)
    else:
        target = exemplar_object(exemplar)
    ex_color = exemplar[target].astype(np.float32).mean(0) / 255.0
    gen_color = region[painted].astype(np.float32).mean(0) / 255.0
    return Fidelity(
        color_error=float(np.linalg.norm(ex_color - gen_color)),
        shape_iou=silhouette_iou(painted, target),
        foreground_fraction=float(painted.mean()),
    )


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of uint8 or 0..1 float images over ``where`` (bool [H, W]); inf when identical."""
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    diff = (a.astype(np.float64) - b.astype(np.float64)) / scale
    if where is not None:
        diff = diff[where]
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


# ----------------------------------------------------------------------------------------------
# COCOEE-style metrics for real models
# ----------------------------------------------------------------------------------------------


def clip_score(
    embed: Callable[[torch.Tensor], torch.Tensor],
    generated_boxes: Iterable[torch.Tensor],
    exemplars: Iterable[torch.Tensor],
) -> float:
    """100 x mean cosine similarity between each generated box crop and its exemplar.

    embed: preprocessed [B, 3, S, S] -> [B, D] image embeddings (e.g. an open_clip model's
    ``encode_image`` after its own preprocessing). The iterables hold preprocessed tensors.
    """
    scores = []
    for gen, ex in zip(generated_boxes, exemplars, strict=True):
        with torch.no_grad():
            a = F.normalize(embed(gen[None] if gen.ndim == 3 else gen).float(), dim=-1)
            b = F.normalize(embed(ex[None] if ex.ndim == 3 else ex).float(), dim=-1)
        scores.append((a * b).sum(-1))
    if not scores:
        raise ValueError("clip_score needs at least one generated box and exemplar")
    return float(torch.cat(scores).mean() * 100)


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """features: [N, D] -> (mean [D], covariance [D, D]) in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D], got {list(features.shape)}")
    f = features.double().cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between two Gaussians (the FID formula), computed with a symmetric
    eigendecomposition: tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) + |mu1 - mu2|^2."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    w1, v1 = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    middle = root1 @ sigma2 @ root1
    w = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(w, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def fid(
    extract: Callable[[torch.Tensor], torch.Tensor],
    generated: Iterable[torch.Tensor],
    reference: Iterable[torch.Tensor],
) -> float:
    """FID between two image sets with any feature extractor (e.g. InceptionV3 pool3 with weights
    the user provides). Iterables yield preprocessed batches [B, 3, H, W]."""

    def collect(batches: Iterable[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([extract(b).flatten(1).float() for b in batches])

    mu1, s1 = feature_statistics(collect(generated))
    mu2, s2 = feature_statistics(collect(reference))
    return frechet_distance(mu1, s1, mu2, s2)
