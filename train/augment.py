"""Paint-by-Example's self-reference training pair: augmented reference, edit mask, square crop.

Reproduces the official dataset code (``ldm/data/open-images.py`` with albumentations 0.4.3):

- reference: the box crop padded by up to 10 px, squashed to the encoder size (224), then
  horizontal flip (p 0.5), rotation in [-20, 20] degrees (p 0.5, reflect-101 border), box blur
  (p 0.3, kernel 3/5/7) and the random 3-point affine that albumentations 0.4.3's
  ``ElasticTransform(alpha_affine=50)`` performed (p 0.3; anchors at centre +- min side // 3, each
  jittered uniformly by +-50 px at 224 px). Its elastic field (alpha 1, sigma 50) moves pixels by a
  small fraction of a pixel and is left out. Everything is torch/torchvision, not albumentations
  (whose modern ElasticTransform silently dropped the affine part);
- mask: each side of the box pushed out by a random share (up to ``box_expansion``, 0.4) of the
  free space; half the time the Bezier shape of ``exemplar_core.bezier``, otherwise the extended
  rectangle;
- crop: a random square window containing the extended box with a random zoom-in (up to 0.6 of the
  free space), resized to the training resolution (bilinear, soft mask edges kept).

All random draws come from one ``random.Random`` so a pair is a pure function of its seed.
Images are float tensors ``[3, H, W]``; boxes are ``(x0, y0, x1, y1)`` pixels, x1/y1 exclusive.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from exemplar_core.bezier import DEFAULT_BOX_EXPANSION, bezier_mask, extend_box
from exemplar_core.config import CLIP_MEAN, CLIP_STD
from exemplar_core.masks import keep_from_edit, masked_source
from exemplar_core.preprocess import normalize

REFERENCE_BASE_SIZE = 224  # the size albumentations' pixel parameters (warp shift 50) refer to


@dataclass(frozen=True)
class ReferenceAugment:
    """The reference (exemplar) augmentation, official defaults."""

    pad: int = 10  # crop padding around the box, clipped at the image border
    hflip_p: float = 0.5
    rotate_p: float = 0.5
    rotate_limit: float = 20.0  # degrees, uniform in [-limit, limit]
    blur_p: float = 0.3
    blur_kernels: tuple[int, ...] = (3, 5, 7)
    warp_p: float = 0.3
    warp_shift: float = 50.0  # anchor jitter in pixels at 224 px (scaled with the encoder size)
    antialias: bool = False  # cv2 INTER_LINEAR squash (no antialias), as the official code


@dataclass(frozen=True)
class PairSpec:
    """How a training pair is built from an image and one box (official defaults)."""

    resolution: int = 512
    reference_size: int = 224
    box_expansion: float = DEFAULT_BOX_EXPANSION  # max share of the free space a box side grows
    bezier_p: float = 0.5  # probability of the Bezier shape (else the extended rectangle)
    bezier_jitter: int = 5
    bezier_dedupe_quirk: bool = True
    zoom_share: float = 0.6  # max share of the free space the square window shrinks by
    antialias: bool = False  # torchvision 0.12 tensor Resize had no antialias
    reference: ReferenceAugment = field(default_factory=ReferenceAugment)
    clip_mean: tuple[float, float, float] = CLIP_MEAN
    clip_std: tuple[float, float, float] = CLIP_STD


@dataclass(frozen=True)
class ReferenceParams:
    """One draw of the reference augmentation (None = that transform is not applied)."""

    hflip: bool
    angle: float | None
    blur_kernel: int | None
    warp: np.ndarray | None  # forward 2x3 affine in pixel coordinates


@dataclass
class TrainingPair:
    """One self-reference example, tensors ready for the training step."""

    image: torch.Tensor  # [3, R, R] in -1..1 (the target)
    keep_mask: torch.Tensor  # [1, R, R] in 0..1, 1 = keep (soft edges after the resize)
    masked_image: torch.Tensor  # [3, R, R] = image * keep_mask (holes are 0 = grey)
    reference: torch.Tensor  # [3, S, S] CLIP-normalised
    mask_kind: Literal["bezier", "box"]


# ---------------------------------------------------------------------------------------------
# geometric helpers


def warp_affine(image: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """``dst(p) = src(M^-1 p)`` (cv2.warpAffine semantics), bilinear, reflect-101 border.

    image: [C, H, W] float. matrix: forward 2x3 affine in pixel-centre coordinates.
    """
    channels, height, width = image.shape
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = torch.from_numpy(np.linalg.inv(full)[:2]).to(torch.float64)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # [H, W, 3]
    source = points @ inverse.T  # [H, W, 2] pixel coordinates in the source
    # align_corners=True maps -1/1 to the corner pixel centres, so "reflection" padding reflects
    # about those centres: cv2's BORDER_REFLECT_101.
    grid = torch.stack(
        [
            2.0 * source[..., 0] / max(width - 1, 1) - 1.0,
            2.0 * source[..., 1] / max(height - 1, 1) - 1.0,
        ],
        dim=-1,
    )
    out = F.grid_sample(
        image[None].float(),
        grid[None].float(),
        mode="bilinear",
        padding_mode="reflection",
        align_corners=True,
    )
    return out[0].to(image.dtype)


def rotation_matrix(angle: float, width: int, height: int) -> np.ndarray:
    """cv2.getRotationMatrix2D about the image centre, scale 1 (positive = counter-clockwise)."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a, b = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy]])


def affine_from_points(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 affine mapping 3 source points [3, 2] onto 3 target points (cv2 semantics)."""
    lhs = np.hstack([source.astype(np.float64), np.ones((3, 1))])
    return np.linalg.solve(lhs, target.astype(np.float64)).T


def three_point_warp(rng: random.Random, size: int, shift: float) -> np.ndarray:
    """albumentations 0.4.3 ElasticTransform's affine: anchors at c +- size//3, jittered +-shift."""
    centre = size // 2
    half = size // 3
    anchors = np.array(
        [
            [centre + half, centre + half],
            [centre + half, centre - half],
            [centre - half, centre - half],
        ],
        dtype=np.float64,
    )
    moved = anchors + np.array([[rng.uniform(-shift, shift) for _ in range(2)] for _ in range(3)])
    return affine_from_points(anchors, moved)


def box_blur(image: torch.Tensor, kernel: int) -> torch.Tensor:
    """cv2.blur: mean over a kernel x kernel window, reflect-101 border. image: [C, H, W]."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"box blur kernel must be a positive odd size, got {kernel}")
    pad = kernel // 2
    padded = F.pad(image[None].float(), (pad, pad, pad, pad), mode="reflect")
    return F.avg_pool2d(padded, kernel, stride=1)[0].to(image.dtype)


# ---------------------------------------------------------------------------------------------
# reference


def crop_reference(image: torch.Tensor, box: tuple[int, int, int, int], pad: int) -> torch.Tensor:
    """The box crop of ``image [3, H, W]``, each side padded by ``min(pad, distance to border)``."""
    _, height, width = image.shape
    x0, y0, x1, y1 = box
    return image[
        :, max(y0 - pad, 0) : min(y1 + pad, height), max(x0 - pad, 0) : min(x1 + pad, width)
    ]


def draw_reference_params(rng: random.Random, spec: ReferenceAugment, size: int) -> ReferenceParams:
    """Draw which reference transforms apply and their parameters (official order and rates)."""
    hflip = rng.random() < spec.hflip_p
    angle = (
        rng.uniform(-spec.rotate_limit, spec.rotate_limit) if rng.random() < spec.rotate_p else None
    )
    blur = rng.choice(spec.blur_kernels) if rng.random() < spec.blur_p else None
    warp = None
    if rng.random() < spec.warp_p:
        warp = three_point_warp(rng, size, spec.warp_shift * size / REFERENCE_BASE_SIZE)
    return ReferenceParams(hflip=hflip, angle=angle, blur_kernel=blur, warp=warp)


def apply_reference_params(image: torch.Tensor, params: ReferenceParams) -> torch.Tensor:
    """Apply a drawn augmentation to a squashed reference ``[3, S, S]`` (0..1), official order."""
    _, height, width = image.shape
    if params.hflip:
        image = image.flip(-1)
    if params.angle is not None:
        image = warp_affine(image, rotation_matrix(params.angle, width, height))
    if params.blur_kernel is not None:
        image = box_blur(image, params.blur_kernel)
    if params.warp is not None:
        image = warp_affine(image, params.warp)
    return image.clamp(0.0, 1.0)


def augment_reference(
    crop: torch.Tensor, rng: random.Random, spec: ReferenceAugment, size: int = 224
) -> torch.Tensor:
    """crop ``[3, h, w]`` in 0..1 -> augmented reference ``[3, size, size]`` in 0..1 (squashed)."""
    squashed = TF.resize(crop, [size, size], antialias=spec.antialias)
    return apply_reference_params(squashed, draw_reference_params(rng, spec, size))


# ---------------------------------------------------------------------------------------------
# mask and crop


def rectangle_mask(box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """Edit mask ``[height, width]`` float32, 1 inside ``box``."""
    mask = np.zeros((height, width), dtype=np.float32)
    x0, y0, x1, y1 = box
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 1.0
    return mask


def draw_edit_mask(
    box: tuple[int, int, int, int],
    width: int,
    height: int,
    rng: random.Random,
    spec: PairSpec,
) -> tuple[np.ndarray, tuple[int, int, int, int], Literal["bezier", "box"]]:
    """Extended box, then the Bezier shape (p = bezier_p) or the extended rectangle.

    Returns (edit mask [H, W] float32 1 = edit, extended box, which kind).
    """
    extended = extend_box(box, width, height, rng, spec.box_expansion)
    if rng.random() < spec.bezier_p:
        mask = bezier_mask(
            box,
            extended,
            width,
            height,
            rng,
            jitter=spec.bezier_jitter,
            dedupe_quirk=spec.bezier_dedupe_quirk,
        )
        return mask, extended, "bezier"
    return rectangle_mask(extended, width, height), extended, "box"


def square_window(
    extended: tuple[int, int, int, int],
    width: int,
    height: int,
    rng: random.Random,
    zoom_share: float,
) -> tuple[int, int, int, int]:
    """The official square crop window (x0, y0, x1, y1) around the extended box.

    Landscape: a square of side H slid horizontally so it contains the extended box, then shrunk
    on every side by ``randint(0, int(zoom_share * free))``; portrait symmetric; square images and
    boxes too wide for any window give the whole image (later squashed).
    """
    ex0, ey0, ex1, ey1 = extended
    if width > height:
        lo = max(ex1 - height, 0)
        hi = min(ex0 + height, width) - height
        if hi <= lo:
            return 0, 0, width, height
        left = rng.randint(lo, hi)
        free = min(ey0, ex0 - left, left + height - ex1, height - ey1)
        zoom = rng.randint(0, int(zoom_share * max(free, 0)))
        return left + zoom, zoom, left + height - zoom, height - zoom
    if height > width:  # the landscape case on the transposed image, the same draws
        y0, x0, y1, x1 = square_window((ey0, ex0, ey1, ex1), height, width, rng, zoom_share)
        return x0, y0, x1, y1
    return 0, 0, width, height


def make_pair(
    image: torch.Tensor, box: tuple[int, int, int, int], rng: random.Random, spec: PairSpec
) -> TrainingPair:
    """Build one self-reference pair from ``image [3, H, W]`` (0..1) and an integer pixel box."""
    _, height, width = image.shape
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {box} is empty or outside the {width}x{height} image")
    crop = crop_reference(image, box, spec.reference.pad)
    reference = augment_reference(crop, rng, spec.reference, spec.reference_size)
    edit_mask, extended, kind = draw_edit_mask(box, width, height, rng, spec)
    wx0, wy0, wx1, wy1 = square_window(extended, width, height, rng, spec.zoom_share)
    size = [spec.resolution, spec.resolution]
    target = TF.resize(image[:, wy0:wy1, wx0:wx1] * 2.0 - 1.0, size, antialias=spec.antialias)
    keep = keep_from_edit(torch.from_numpy(edit_mask)[None, wy0:wy1, wx0:wx1])
    keep = TF.resize(keep, size, antialias=spec.antialias).clamp(0.0, 1.0)
    return TrainingPair(
        image=target,
        keep_mask=keep,
        masked_image=masked_source(target, keep),
        reference=normalize(reference, spec.clip_mean, spec.clip_std),
        mask_kind=kind,
    )
