"""Which layout a path holds (``detect_format``) and what a foreign LDM checkpoint is instead."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .container import FORMAT_NAME, UNET_PREFIX, CheckpointError, Format, Tensor
from .diffusers import DIFFUSERS_PARTS
from .keymap import describe_keys
from .safe_read import safetensors_header


def detect_format(path: str | os.PathLike[str]) -> Format:
    """Which layout a path holds (only the name and header are read)."""
    return detect_with_header(Path(path))[0]


def detect_with_header(path: Path) -> tuple[Format, dict[str, Any] | None]:
    """The layout of ``path`` and, for a ``.safetensors`` file, its parsed header (read once)."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_dir():
        if (path / "model_index.json").is_file() or any(
            (path / part).is_dir() for part in DIFFUSERS_PARTS
        ):
            return "diffusers", None
        raise CheckpointError(
            f"{path} is a folder without model_index.json, unet/, vae/ or image_encoder/; expected "
            f"a diffusers Paint-by-Example folder or a checkpoint file"
        )
    if path.suffix == ".safetensors":
        header = safetensors_header(path)
        metadata = dict(header.get("__metadata__") or {})
        if metadata.get("format") == FORMAT_NAME:
            return "single-file", header
        return "official-safetensors", header
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return "official-ckpt", None
    raise CheckpointError(
        f"{path} has the extension {path.suffix!r}; expected .safetensors, .ckpt (.pt/.pth/.bin) "
        f"or a diffusers folder"
    )


def describe_foreign_checkpoint(state_dict: Mapping[str, Tensor]) -> str | None:
    """What an LDM-layout state dict is when it is not Paint-by-Example (None when it is)."""
    keys = list(state_dict)
    conv_in = state_dict.get(UNET_PREFIX + "input_blocks.0.0.weight")
    in_channels = int(conv_in.shape[1]) if conv_in is not None and conv_in.ndim == 4 else None
    context_dims = {
        int(t.shape[1])
        for k, t in state_dict.items()
        if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight") and t.ndim == 2
    }
    has_pbe = (
        any(k.startswith("cond_stage_model.mapper.") for k in keys)
        or "learnable_vector" in state_dict
    )
    text_encoder = any(
        k.startswith(
            (
                "cond_stage_model.transformer.text_model.",
                "cond_stage_model.model.",
                "cond_stage_model.transformer.embeddings.token_embedding",
            )
        )
        for k in keys
    )
    if (
        any(k.startswith("conditioner.embedders.") for k in keys)
        or UNET_PREFIX + "label_emb.0.0.weight" in state_dict
        or 2048 in context_dims
    ):
        return "an SDXL checkpoint (conditioner.embedders / label_emb / 2048-wide cross-attention)"
    if has_pbe:
        return None
    if in_channels is None:
        if "conv_in.weight" in state_dict or "time_embedding.linear_1.weight" in state_dict:
            return "a diffusers-layout UNet file (conv_in.*), not a full LDM checkpoint"
        found = describe_keys({".".join(k.split(".")[:2]) for k in keys})
        return f"no LDM UNet (model.diffusion_model.input_blocks.*); top-level keys: {found}"
    encoder = "a CLIP text encoder" if text_encoder else "no exemplar encoder"
    if in_channels == 9:
        return (
            f"a Stable Diffusion inpainting checkpoint (9-channel UNet, {encoder}; no "
            f"cond_stage_model.mapper, proj_out or learnable_vector)"
        )
    if in_channels == 4:
        return f"a Stable Diffusion text-to-image checkpoint (4-channel UNet, {encoder})"
    return f"an LDM checkpoint with a {in_channels}-channel UNet and {encoder}"
