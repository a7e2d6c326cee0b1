"""The project's own single ``.safetensors`` (see ``docs/checkpoint-format.md``).

``model.diffusion_model.*`` (LDM UNet), ``first_stage_model.*`` (LDM VAE), ``exemplar_encoder.*``
(``ExemplarEncoder.state_dict()``), the three configs as JSON in the metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, EncoderConfig
from ..files import atomic_write, same_file
from ..model import ModelConfigs
from .container import (
    ENCODER_PREFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    RESERVED_METADATA,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointError,
    PbECheckpoint,
    StateDict,
    prepare_tensors,
    resolve_dtype,
)
from .keymap import describe_keys
from .safe_read import read_safetensors


def _json_metadata(metadata: Mapping[str, str], key: str, path: Path) -> Any:
    if key not in metadata:
        raise CheckpointError(f"{path} is a {FORMAT_NAME} file without the {key!r} metadata")
    try:
        return json.loads(metadata[key])
    except ValueError as err:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON: {err}") from err


def read_single_file(
    path: Path, lazy: bool, header: Mapping[str, Any] | None = None
) -> PbECheckpoint:
    """The project single file; ``header``: its ``.safetensors`` header already read, if any."""
    tensors, metadata = read_safetensors(path, lazy, header)
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this version reads {FORMAT_VERSION!r}. "
            f"Update the node pack (or convert the file again)."
        )
    parts: dict[str, StateDict] = {"unet": {}, "vae": {}, "encoder": {}}
    prefixes = {UNET_PREFIX: "unet", VAE_PREFIX: "vae", ENCODER_PREFIX: "encoder"}
    unknown = []
    for key, tensor in tensors.items():
        for prefix, part in prefixes.items():
            if key.startswith(prefix):
                parts[part][key.removeprefix(prefix)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{path} has keys outside {', '.join(prefixes)}: {describe_keys(unknown)}"
        )
    empty = [prefix + "*" for prefix, part in prefixes.items() if not parts[part]]
    if empty:
        raise CheckpointError(f"{path} has no {', '.join(empty)} weights; the file is incomplete")
    try:
        configs = ModelConfigs(
            unet=_json_metadata(metadata, "unet_config", path),
            vae=_json_metadata(metadata, "vae_config", path),
            encoder=EncoderConfig.from_dict(_json_metadata(metadata, "encoder_config", path)),
        )
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from err
    extra = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA}
    return PbECheckpoint(
        parts["unet"], parts["vae"], parts["encoder"], configs, str(path), extra, "single-file"
    )


def single_file_state_dict(ckpt: PbECheckpoint) -> StateDict:
    """The project single-file key layout (prefixes ``model.diffusion_model.`` etc.)."""
    out = {UNET_PREFIX + k: v for k, v in ckpt.unet.items()}
    out.update({VAE_PREFIX + k: v for k, v in ckpt.vae.items()})
    out.update({ENCODER_PREFIX + k: v for k, v in ckpt.encoder.items()})
    return out


def single_file_metadata(ckpt: PbECheckpoint) -> dict[str, str]:
    """The metadata strings written into the single file (extras first, reserved keys win)."""
    metadata: dict[str, str] = {}
    for key, value in ckpt.metadata.items():
        if key in RESERVED_METADATA:
            continue
        metadata[str(key)] = value if isinstance(value, str) else json.dumps(value)
    metadata.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "unet_config": json.dumps(ckpt.configs.unet, sort_keys=True),
            "vae_config": json.dumps(ckpt.configs.vae, sort_keys=True),
            "encoder_config": json.dumps(ckpt.configs.encoder.to_dict(), sort_keys=True),
        }
    )
    return metadata


def save_single_file(
    ckpt: PbECheckpoint, path: str | os.PathLike[str], dtype: torch.dtype | str | None = None
) -> Path:
    """Write the project single-file ``.safetensors`` atomically; refuses to overwrite the source.

    ``dtype`` (``torch.float16``/``"fp16"``, ...) casts floating tensors only; None keeps them.
    """
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: the single file must end in .safetensors")
    if ckpt.source and same_file(out, Path(ckpt.source)):
        raise CheckpointError(
            f"{out} is the file being converted; write the result to another path"
        )
    tensors = prepare_tensors(single_file_state_dict(ckpt), resolve_dtype(dtype))
    metadata = single_file_metadata(ckpt)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata))
    return out
