"""The diffusers ``PaintByExamplePipeline`` folder: ``unet/``, ``vae/``, ``image_encoder/``."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from ..config import CLIP_MEAN, CLIP_STD, ConfigError, EncoderConfig
from ..files import atomic_write, atomic_write_text
from ..model import SD1_UNET_CONFIG, SD1_VAE_CONFIG, ModelConfigs
from . import arch, keymap
from .container import CheckpointError, PbECheckpoint, StateDict, prepare_tensors
from .safe_read import read_weights_file

DIFFUSERS_PARTS = ("unet", "vae", "image_encoder")
# Weight file stems per part: (safetensors stem, pickle stem).
DIFFUSERS_WEIGHTS = {
    "unet": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "vae": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "image_encoder": ("model", "pytorch_model"),
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable JSON file: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds {type(data).__name__}, expected a JSON object")
    return data


def _diffusers_weights(folder: Path, lazy: bool) -> StateDict:
    """The weights of one diffusers part folder (safetensors preferred, fp16 variants, shards)."""
    stem, bin_stem = DIFFUSERS_WEIGHTS[folder.name]
    candidates = [
        folder / f"{stem}.safetensors",
        folder / f"{stem}.fp16.safetensors",
        folder / f"{bin_stem}.bin",
        folder / f"{bin_stem}.fp16.bin",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return read_weights_file(candidate, lazy)
    for index in (folder / f"{stem}.safetensors.index.json", folder / f"{bin_stem}.bin.index.json"):
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            weights: StateDict = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{index} names the shard {shard}, which is missing")
                weights.update(read_weights_file(folder / shard, lazy))
            return weights
    raise CheckpointError(
        f"{folder} has no weights file; expected one of "
        f"{', '.join(c.name for c in candidates)} (or a sharded .index.json)"
    )


# Keys every stored UNet / VAE config keeps even at their diffusers default values: the keys our
# configs name (the published ones; tiny and mini name the same).
_CORE_UNET_KEYS = tuple(SD1_UNET_CONFIG)
_CORE_VAE_KEYS = tuple(SD1_VAE_CONFIG)


@cache
def _init_defaults(class_name: str) -> dict[str, Any]:
    import diffusers

    cls = getattr(diffusers, class_name)
    params = inspect.signature(cls.__init__).parameters
    return {
        name: list(p.default) if isinstance(p.default, tuple) else p.default
        for name, p in params.items()
        if name != "self" and p.default is not inspect.Parameter.empty
    }


def canonical_config(raw: Mapping[str, Any], class_name: str) -> dict[str, Any]:
    """A diffusers config reduced to the core keys plus the keys that differ from the defaults."""
    defaults = _init_defaults(class_name)
    core = _CORE_UNET_KEYS if class_name == "UNet2DConditionModel" else _CORE_VAE_KEYS
    out: dict[str, Any] = {}
    for key in core:
        if key in raw or key in defaults:
            value = raw.get(key, defaults.get(key))
            out[key] = list(value) if isinstance(value, tuple) else value
    for key, value in raw.items():
        if key.startswith("_") or key in out or key not in defaults:
            continue
        value = list(value) if isinstance(value, tuple) else value
        if value != defaults[key]:
            out[key] = value
    return out


# The config keys a diffusers folder must agree on with what its weights' shapes show.
_CHECKED_UNET_KEYS = tuple(
    k for k in _CORE_UNET_KEYS if k not in ("sample_size", "attention_head_dim", "norm_num_groups")
)
_CHECKED_VAE_KEYS = tuple(
    k
    for k in _CORE_VAE_KEYS
    if k
    not in (
        "down_block_types",
        "up_block_types",
        "norm_num_groups",
        "sample_size",
        "scaling_factor",
    )
)


def _check_config_matches(
    config: Mapping[str, Any], derived: Mapping[str, Any], keys: tuple[str, ...], where: Path
) -> None:
    for key in keys:
        if key in derived and config.get(key) != derived[key]:
            raise CheckpointError(
                f"{where} says {key}={config.get(key)!r} but the weights have {derived[key]!r}"
            )


def read_diffusers(folder: Path, lazy: bool) -> PbECheckpoint:
    """A ``PaintByExamplePipeline`` folder; its configs are checked against its weights."""
    index_path = folder / "model_index.json"
    if index_path.is_file():
        index = _read_json(index_path)
        class_name = index.get("_class_name")
        if class_name and class_name != "PaintByExamplePipeline":
            raise CheckpointError(
                f"{folder} is a diffusers {class_name} folder, not Paint-by-Example; expected "
                f"_class_name PaintByExamplePipeline with unet/, vae/ and image_encoder/"
            )
    present = [p for p in DIFFUSERS_PARTS if (folder / p).is_dir()]
    missing = [p for p in DIFFUSERS_PARTS if p not in present]
    if missing:
        hint = (
            " (it has text_encoder/: a text-to-image pipeline)"
            if (folder / "text_encoder").is_dir()
            else ""
        )
        raise CheckpointError(
            f"{folder} is a diffusers folder without {', '.join(m + '/' for m in missing)}"
            f"{hint}; found {', '.join(p + '/' for p in present) or 'none of the parts'}; "
            f"expected unet/, vae/ and image_encoder/ as in Fantasy-Studio/Paint-by-Example"
        )
    for part in DIFFUSERS_PARTS:
        if not (folder / part / "config.json").is_file():
            raise CheckpointError(f"{folder / part} has no config.json")
    unet_raw = _read_json(folder / "unet" / "config.json")
    vae_raw = _read_json(folder / "vae" / "config.json")
    clip_raw = _read_json(folder / "image_encoder" / "config.json")
    unet_config = canonical_config(unet_raw, "UNet2DConditionModel")
    vae_config = canonical_config(vae_raw, "AutoencoderKL")
    mean, std = CLIP_MEAN, CLIP_STD
    extractor = folder / "feature_extractor" / "preprocessor_config.json"
    if extractor.is_file():
        pre = _read_json(extractor)
        mean = tuple(pre.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(pre.get("image_std", std))  # type: ignore[assignment]
    try:
        unet = keymap.unet_diffusers_to_ldm(_diffusers_weights(folder / "unet", lazy), unet_config)
        vae = keymap.vae_diffusers_to_ldm(_diffusers_weights(folder / "vae", lazy), vae_config)
        encoder = keymap.encoder_from_diffusers(_diffusers_weights(folder / "image_encoder", lazy))
        derived_unet = arch.unet_config_from_ldm(unet)
        derived_vae = arch.vae_config_from_ldm(vae)
        encoder_config = arch.encoder_config_from_clip_config(clip_raw, encoder, mean, std)
    except (keymap.KeyMappingError, ConfigError, KeyError) as err:
        raise CheckpointError(f"{folder}: {err}") from err
    _check_config_matches(unet_config, derived_unet, _CHECKED_UNET_KEYS, folder / "unet")
    _check_config_matches(vae_config, derived_vae, _CHECKED_VAE_KEYS, folder / "vae")
    configs = ModelConfigs(unet_config, vae_config, encoder_config)
    return PbECheckpoint(unet, vae, encoder, configs, str(folder), {}, "diffusers")


def clip_vision_config(encoder: EncoderConfig) -> dict[str, Any]:
    """The transformers ``CLIPVisionConfig`` dict of an encoder (diffusers image_encoder config)."""
    return {
        "architectures": ["PaintByExampleImageEncoder"],
        "model_type": "clip_vision_model",
        "hidden_size": encoder.width,
        "intermediate_size": int(encoder.width * encoder.mlp_ratio),
        "num_hidden_layers": encoder.layers,
        "num_attention_heads": encoder.heads,
        "image_size": encoder.image_size,
        "patch_size": encoder.patch_size,
        "projection_dim": encoder.out_dim,
        "hidden_act": "quick_gelu" if encoder.quick_gelu else "gelu",
        "layer_norm_eps": 1e-5,
        "num_channels": 3,
    }


def save_diffusers(
    ckpt: PbECheckpoint, folder: str | os.PathLike[str], vision_model_level: bool = True
) -> Path:
    """Write a diffusers ``PaintByExamplePipeline`` folder (model parts, configs, scheduler).

    diffusers' own ``PaintByExampleImageEncoder`` builds ``(layers + 1) // 5`` mapper blocks; this
    reader takes any depth. ``vision_model_level`` False writes transformers-5 CLIP keys.
    """
    from safetensors.torch import save_file

    from ..config import SCHEDULE

    out = Path(folder)
    configs = ckpt.configs
    files = {
        "unet": (
            keymap.unet_ldm_to_diffusers(ckpt.unet, configs.unet),
            {**configs.unet, "_class_name": "UNet2DConditionModel"},
            "diffusion_pytorch_model.safetensors",
        ),
        "vae": (
            keymap.vae_ldm_to_diffusers(ckpt.vae, configs.vae),
            {**configs.vae, "_class_name": "AutoencoderKL"},
            "diffusion_pytorch_model.safetensors",
        ),
        "image_encoder": (
            keymap.encoder_to_diffusers(ckpt.encoder, vision_model_level),
            clip_vision_config(configs.encoder),
            "model.safetensors",
        ),
    }
    for part, (weights, config, name) in files.items():
        atomic_write_text(out / part / "config.json", json.dumps(config, indent=2))
        tensors = prepare_tensors(weights, None)
        atomic_write(
            out / part / name, lambda tmp, t=tensors: save_file(t, str(tmp), {"format": "pt"})
        )
    scheduler = {
        "_class_name": "PNDMScheduler",
        "skip_prk_steps": True,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        **SCHEDULE,
    }
    atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(scheduler, indent=2))
    size = configs.encoder.image_size
    extractor = {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
        "size": {"shortest_edge": size},
        "image_mean": list(configs.encoder.mean),
        "image_std": list(configs.encoder.std),
        "image_processor_type": "CLIPImageProcessor",
    }
    atomic_write_text(out / "feature_extractor" / "preprocessor_config.json", json.dumps(extractor))
    index = {
        "_class_name": "PaintByExamplePipeline",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["paint_by_example", "PaintByExampleImageEncoder"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
    }
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2))
    return out
