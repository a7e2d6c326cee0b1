"""Loading: any supported layout -> ``PbECheckpoint`` -> ``PaintByExampleModel``, and back."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import ConfigError
from ..model import PaintByExampleModel
from . import keymap
from .container import CheckpointError, PbECheckpoint, resolve_dtype
from .detect import detect_with_header
from .diffusers import read_diffusers
from .official import read_official
from .single_file import read_single_file


def load_checkpoint(path: str | os.PathLike[str], lazy: bool = False) -> PbECheckpoint:
    """Read any supported format into a ``PbECheckpoint``.

    ``lazy``: safetensors tensors become meta tensors (shapes and dtypes only, for ``info``);
    pickled files are memory-mapped either way.
    """
    p = Path(path)
    fmt, header = detect_with_header(p)
    if fmt == "diffusers":
        ckpt = read_diffusers(p, lazy)
    elif fmt == "single-file":
        ckpt = read_single_file(p, lazy, header)
    else:
        ckpt = read_official(p, fmt, lazy, header)
    try:
        ckpt.configs.check()
    except ConfigError as err:
        raise CheckpointError(f"{ckpt.source}: {err}") from err
    return ckpt


def checkpoint_from_model(
    model: PaintByExampleModel, metadata: Mapping[str, str] | None = None
) -> PbECheckpoint:
    """The canonical checkpoint of a built model (tensors shared with the model, not copied)."""
    configs = model.configs
    return PbECheckpoint(
        unet=keymap.unet_diffusers_to_ldm(model.unet.state_dict(), configs.unet),
        vae=keymap.vae_diffusers_to_ldm(model.vae.state_dict(), configs.vae),
        encoder=dict(model.encoder.state_dict()),
        configs=configs,
        source="",
        metadata=dict(metadata or {}),
        format="model",
    )


def model_from_checkpoint(
    ckpt: PbECheckpoint,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> PaintByExampleModel:
    """Build a ``PaintByExampleModel`` holding the checkpoint's weights (no random init pass).

    The weights are copied into freshly allocated parameters (none stay mapped to the file).
    """
    with torch.device("meta"):
        model = PaintByExampleModel(ckpt.configs)
    model.to_empty(device=device or "cpu")
    target = resolve_dtype(dtype)
    if target is not None:
        model.to(dtype=target)
    parts = {
        model.unet: keymap.unet_ldm_to_diffusers(ckpt.unet, ckpt.configs.unet),
        model.vae: keymap.vae_ldm_to_diffusers(ckpt.vae, ckpt.configs.vae),
        model.encoder: ckpt.encoder,
    }
    for module, weights in parts.items():
        own = module.state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        wrong = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{ckpt.source or 'checkpoint'}: weights do not fit the {type(module).__name__} "
                f"built from its config: missing {keymap.describe_keys(missing) or 'none'}; "
                f"unexpected {keymap.describe_keys(unexpected) or 'none'}; shape mismatch "
                f"{keymap.describe_keys(wrong) or 'none'}"
            )
        module.load_state_dict(weights, strict=True)
    return model.eval()


def load_model(
    path: str | os.PathLike[str],
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> PaintByExampleModel:
    """``load_checkpoint`` then ``model_from_checkpoint``."""
    return model_from_checkpoint(load_checkpoint(path), device=device, dtype=dtype)
