"""The official (LDM / Lightning) layout: ``model.ckpt`` or the same keys in a ``.safetensors``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..model import ModelConfigs
from . import arch, keymap
from .container import (
    RESERVED_METADATA,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointError,
    Format,
    PbECheckpoint,
    StateDict,
    Tensor,
)
from .detect import describe_foreign_checkpoint
from .safe_read import read_pickle, read_safetensors

EXPECTED_OFFICIAL = (
    "expected a Paint-by-Example checkpoint: model.diffusion_model.* (UNet with 9 input channels), "
    "first_stage_model.* (VAE), cond_stage_model.transformer.* (CLIP vision tower), "
    "cond_stage_model.mapper.*, cond_stage_model.final_ln.*, proj_out.* and learnable_vector"
)
# Keys of the official checkpoint that are not weights of the model (DDPM schedule, EMA, logvar).
IGNORED_OFFICIAL_KEYS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "lvlb_weights",
        "logvar",
    }
)
IGNORED_OFFICIAL_PREFIXES = ("model_ema.",)
OFFICIAL_HEAD_KEYS = frozenset(name for name, _ in keymap.ENCODER_HEAD.values())


def _unwrap_lightning(obj: Any, path: Path) -> StateDict:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no tensors under 'state_dict'; {EXPECTED_OFFICIAL}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def split_official(state_dict: Mapping[str, Tensor], path: Path) -> PbECheckpoint:
    """Official LDM keys -> checkpoint parts; raises naming what was found when it is not PbE."""
    foreign = describe_foreign_checkpoint(state_dict)
    if foreign is not None:
        raise CheckpointError(
            f"{path} is not a Paint-by-Example checkpoint: it is {foreign}; {EXPECTED_OFFICIAL}"
        )
    unet, vae, tower, mapper, head, unknown = {}, {}, {}, {}, {}, []
    for key, tensor in state_dict.items():
        if key.startswith(UNET_PREFIX):
            unet[key.removeprefix(UNET_PREFIX)] = tensor
        elif key.startswith(VAE_PREFIX):
            vae[key.removeprefix(VAE_PREFIX)] = tensor
        elif key.startswith(keymap.OFFICIAL_TOWER_PREFIX):
            tower[key.removeprefix(keymap.OFFICIAL_TOWER_PREFIX)] = tensor
        elif key.startswith(keymap.OFFICIAL_MAPPER_PREFIX + "mapper."):
            mapper[key.removeprefix(keymap.OFFICIAL_MAPPER_PREFIX)] = tensor
        elif key in OFFICIAL_HEAD_KEYS:
            head[key] = tensor
        elif key in IGNORED_OFFICIAL_KEYS or key.startswith(IGNORED_OFFICIAL_PREFIXES):
            continue
        else:
            unknown.append(key)
    missing = [
        name
        for name, part in (
            ("the UNet (model.diffusion_model.*)", unet),
            ("the VAE (first_stage_model.*)", vae),
            ("the CLIP vision tower (cond_stage_model.transformer.*)", tower),
            ("the mapper (cond_stage_model.mapper.*)", mapper),
        )
        if not part
    ]
    if missing:
        raise CheckpointError(
            f"{path} is an incomplete Paint-by-Example checkpoint: it lacks {', '.join(missing)}; "
            f"{EXPECTED_OFFICIAL}"
        )
    if unknown:
        raise CheckpointError(
            f"{path} has keys that are not part of a Paint-by-Example checkpoint: "
            f"{keymap.describe_keys(unknown)}; {EXPECTED_OFFICIAL}"
        )
    try:
        encoder = keymap.encoder_from_official(tower, mapper, head)
        configs = ModelConfigs(
            unet=arch.unet_config_from_ldm(unet),
            vae=arch.vae_config_from_ldm(vae),
            encoder=arch.encoder_config_from_weights(encoder),
        )
    except (keymap.KeyMappingError, ConfigError, KeyError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    return PbECheckpoint(unet, vae, encoder, configs, str(path))


def read_official(
    path: Path, fmt: Format, lazy: bool, header: Mapping[str, Any] | None = None
) -> PbECheckpoint:
    """An official checkpoint; ``header``: a ``.safetensors`` header already read, if any."""
    if fmt == "official-safetensors":
        state_dict, metadata = read_safetensors(path, lazy, header)
    else:
        state_dict, metadata = _unwrap_lightning(read_pickle(path), path), {}
    ckpt = split_official(state_dict, path)
    ckpt.format = fmt
    ckpt.metadata = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA}
    return ckpt


def official_state_dict(ckpt: PbECheckpoint) -> StateDict:
    """The checkpoint in the official LDM key layout (transformers-4 CLIP names)."""
    out = {UNET_PREFIX + k: v for k, v in ckpt.unet.items()}
    out.update({VAE_PREFIX + k: v for k, v in ckpt.vae.items()})
    out.update(keymap.encoder_to_official(ckpt.encoder))
    return out
