"""Validation images: held-out self-reference pairs edited with the standalone editor."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from exemplar_core.editor import Editor, EditSettings
from exemplar_core.model import PaintByExampleModel

from .augment import PairSpec, ReferenceAugment
from .dataset import PairDataset
from .readers import ImageRecord


def clean_spec(spec: PairSpec) -> PairSpec:
    """The same pair recipe with the reference augmentation switched off (a clean exemplar)."""
    ref = ReferenceAugment(
        pad=spec.reference.pad,
        hflip_p=0,
        rotate_p=0,
        blur_p=0,
        warp_p=0,
        antialias=spec.reference.antialias,
    )
    return dataclasses.replace(spec, reference=ref)


def unnormalise(reference: torch.Tensor, spec: PairSpec) -> torch.Tensor:
    mean = torch.tensor(spec.clip_mean)[:, None, None]
    std = torch.tensor(spec.clip_std)[:, None, None]
    return (reference * std + mean).clamp(0, 1)


@dataclasses.dataclass
class ValidationPair:
    source: torch.Tensor  # [1, 3, R, R] 0..1
    edit_mask: torch.Tensor  # [1, 1, R, R] 0..1, 1 = edit
    exemplar: torch.Tensor  # [1, 3, S, S] 0..1


def validation_pairs(records: list[ImageRecord], spec: PairSpec, seed: int) -> list[ValidationPair]:
    """Fixed pairs (same every call) from held-out records; unreadable ones are left out."""
    dataset = PairDataset(records, clean_spec(spec), seed, salt="validation")
    pairs = []
    for index in range(len(records)):
        try:
            item = dataset.make(0, index)
        except Exception:  # noqa: BLE001 - a bad held-out image only costs one validation tile
            continue
        pairs.append(
            ValidationPair(
                source=((item["image"] + 1) / 2).clamp(0, 1)[None],
                edit_mask=(1 - item["keep_mask"])[None],
                exemplar=unnormalise(item["reference"], spec)[None],
            )
        )
    return pairs


@torch.no_grad()
def render_validation(
    model: PaintByExampleModel,
    pairs: list[ValidationPair],
    steps: int,
    similarity: float,
    scheduler: str,
    seed: int,
    device: torch.device,
) -> torch.Tensor:
    """A grid ``[3, N*R, 4*R]`` in 0..1: per row source | masked source | exemplar | edit.

    Puts ``model`` in eval mode with gradients off (the caller restores training mode).
    """
    editor = Editor(model, device=device, dtype=torch.float32, progress=False)
    rows = []
    for i, pair in enumerate(pairs):
        size = pair.source.shape[-1]
        settings = EditSettings(
            steps=steps,
            similarity=similarity,
            seed=seed + i,
            scheduler=scheduler,
            size=size,
            whole_image=True,
            paste_back=False,
        )
        result = editor.edit(pair.source, pair.edit_mask, pair.exemplar, settings).image
        masked = pair.source * (pair.edit_mask < 0.5) + 0.5 * (pair.edit_mask >= 0.5)
        exemplar = F.interpolate(pair.exemplar, size=(size, size), mode="bilinear")
        tiles = [pair.source, masked, exemplar, result.cpu()[:, :, :size, :size]]
        rows.append(torch.cat([t.float().cpu() for t in tiles], dim=-1))
    return torch.cat(rows, dim=-2)[0]
