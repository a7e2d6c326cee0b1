"""A checkpoint's CLIP tower as a stock ``clip_vision`` file (as ComfyUI's CLIPVisionLoader reads).

The layout is transformers' ``CLIPVisionModelWithProjection``: ``vision_model.*`` plus
``visual_projection.weight``, the keys of OpenAI's ``clip-vit-large-patch14`` that ComfyUI detects
as ViT-L/14 (24 layers, 257 positions). Paint-by-Example never stored CLIP's projection (it uses
the unprojected class token), so an exported file carries a zero projection: its
``image_embeds`` are zero, its ``last_hidden_state`` (what the Exemplar Mapper reads) is exact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import EncoderConfig
from ..files import atomic_write
from .container import CheckpointError, StateDict, prepare_tensors
from .keymap import clip_open_clip_to_transformers

CLIP_PROJECTION_KEY = "visual_projection.weight"
CLIP_VIT_L_PROJECTION_DIM = 768  # OpenAI ViT-L/14's image embedding width


def check_stock_vit_l(config: EncoderConfig) -> None:
    """ComfyUI's CLIPVisionLoader recognises ViT-L/14 at 224 px by its layer and position count;
    other towers would not load as what they are."""
    published = EncoderConfig()
    shape = (config.width, config.layers, config.image_size, config.patch_size)
    if shape != (published.width, published.layers, published.image_size, published.patch_size):
        raise CheckpointError(
            f"the checkpoint's tower is {config.backbone} ({config.width}-d, {config.layers} "
            f"layers, {config.image_size} px); ComfyUI's CLIPVisionLoader recognises only "
            f"OpenAI CLIP ViT-L/14 at 224 px among towers Paint-by-Example uses"
        )


def clip_vision_state_dict(
    encoder: Mapping[str, torch.Tensor], projection: torch.Tensor | None = None
) -> StateDict:
    """Our encoder state dict (``tower.*`` keys) -> the stock clip_vision keys.

    projection: CLIP's ``visual_projection.weight`` [768, width]; None writes zeros (a
    Paint-by-Example checkpoint has none). The tensors are shared, not copied.
    """
    tower = {k.removeprefix("tower."): v for k, v in encoder.items() if k.startswith("tower.")}
    if not tower:
        raise CheckpointError("the encoder has no tower.* weights to export")
    out = clip_open_clip_to_transformers(tower, vision_model_level=True)
    reference = tower["ln_post.weight"]
    if projection is None:
        projection = torch.zeros(
            CLIP_VIT_L_PROJECTION_DIM, reference.shape[0], dtype=reference.dtype
        )
    out[CLIP_PROJECTION_KEY] = projection
    return out


def check_clip_vision_name(path: str | os.PathLike[str]) -> Path:
    """The output path, refused unless it ends in ``.safetensors``; callers check it before
    reading a checkpoint (minutes for the official file)."""
    out = Path(path)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out} must end in .safetensors (ComfyUI's clip_vision files do)")
    return out


def save_clip_vision(
    encoder: Mapping[str, torch.Tensor],
    config: EncoderConfig,
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the encoder's tower as a stock clip_vision ``.safetensors``, atomically and never
    over an existing file; fp16 by default (ComfyUI keeps CLIP Vision weights in fp16 mostly)."""
    from safetensors.torch import save_file

    check_stock_vit_l(config)
    out = check_clip_vision_name(path)
    tensors = prepare_tensors(clip_vision_state_dict(encoder), dtype)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp)), overwrite=False)
    return out
