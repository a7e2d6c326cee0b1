"""Training start points: SD 1.x (+5 zero channels), SD inpainting (reordered, polarity folded),
an existing Paint-by-Example checkpoint, or random weights (smoke tests).

SD files are read as a diffusers folder (``unet/`` and ``vae/`` sub-folders) or as one LDM
single file (``model.diffusion_model.*``, ``first_stage_model.*``), read by
``exemplar_core.checkpoint.safe_read`` (no code from the file runs; sizes are bounded) and converted
with ``exemplar_core.checkpoint.keymap``. The CLIP tower comes from a local file the user gives;
the mapper, final LayerNorm, projection and learned vector start as the official code's (random).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from exemplar_core.checkpoint import arch, keymap
from exemplar_core.checkpoint.safe_read import read_pickle, read_safetensors
from exemplar_core.config import EncoderConfig
from exemplar_core.encoder import init_like_official
from exemplar_core.model import ModelConfigs, PaintByExampleModel

from .config import ModelSection

StateDict = dict[str, torch.Tensor]
LATENT_CHANNELS = 4


class ModelInitError(ValueError):
    """The start checkpoint cannot be used as asked."""


# ---------------------------------------------------------------------------------------------
# conv_in surgery


def expand_sd_conv_in(weight: torch.Tensor) -> torch.Tensor:
    """SD ``[C, 4, k, k]`` -> ``[C, 9, k, k]``: masked-latent and keep channels start at zero."""
    if weight.shape[1] != LATENT_CHANNELS:
        raise ModelInitError(
            f"SD conv_in has {weight.shape[1]} input channels, expected 4 (a text-to-image SD 1.x "
            "UNet); for an inpainting UNet use model.init = 'sd_inpaint'"
        )
    extra = weight.new_zeros(weight.shape[0], LATENT_CHANNELS + 1, *weight.shape[2:])
    return torch.cat([weight, extra], dim=1)


def convert_inpaint_conv_in(
    weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SD-inpainting conv_in -> Paint-by-Example conv_in.

    SD inpainting reads ``[x (4), edit mask (1, 1 = repaint), masked latent (4)]``; Paint-by-Example
    reads ``[x, masked latent, keep]`` with keep = 1 - edit. The mask term is linear:
    ``w_m * edit = w_m * (1 - keep) = w_m * 1 - w_m * keep``, so the keep channel gets ``-w_m`` and
    the constant ``conv(1, w_m) = sum(w_m)`` moves into the bias. With zero padding that constant
    is exact away from the border; on the one-latent-pixel border ring the padded taps make it
    differ by the out-of-image taps' weights (fine-tuning absorbs it).
    """
    if weight.shape[1] != 2 * LATENT_CHANNELS + 1:
        raise ModelInitError(
            f"SD-inpainting conv_in has {weight.shape[1]} input channels, expected 9 "
            "([x, mask, masked latent]); for a text-to-image SD UNet use model.init = 'sd'"
        )
    x = weight[:, :LATENT_CHANNELS]
    w_mask = weight[:, LATENT_CHANNELS : LATENT_CHANNELS + 1]
    masked = weight[:, LATENT_CHANNELS + 1 :]
    new_weight = torch.cat([x, masked, -w_mask], dim=1)
    new_bias = bias + w_mask.sum(dim=(1, 2, 3))
    return new_weight, new_bias


# ---------------------------------------------------------------------------------------------
# reading SD files


def _read_state_dict(path: Path) -> StateDict:
    """The tensors of a weights file, read as ``load_checkpoint`` reads one (a hostile or broken
    file raises its ``CheckpointError``)."""
    if path.suffix == ".safetensors":
        return read_safetensors(path, lazy=False)[0]
    data = read_pickle(path)
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelInitError(f"{path} does not hold a state dict")
    return data


def _strip(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _read_diffusers_part(folder: Path, name: str) -> tuple[dict[str, Any], StateDict]:
    sub = folder / name
    config_file = sub / "config.json"
    if not config_file.is_file():
        raise ModelInitError(f"{folder} has no {name}/config.json: not a diffusers SD folder")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    for candidate in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (sub / candidate).is_file():
            return config, _read_state_dict(sub / candidate)
    raise ModelInitError(f"{sub} has no diffusion_pytorch_model.safetensors/.bin weights")


def read_sd(
    path: str | Path, unet_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], StateDict, dict[str, Any], StateDict]:
    """(unet config, diffusers unet weights, vae config, vae weights) of an SD 1.x file."""
    source = Path(path)
    if source.is_dir():
        unet_cfg, unet_sd = _read_diffusers_part(source, "unet")
        vae_cfg, vae_sd = _read_diffusers_part(source, "vae")
        return unet_cfg, unet_sd, vae_cfg, vae_sd
    if not source.is_file():
        raise ModelInitError(f"model.path {source} does not exist")
    full = _read_state_dict(source)
    ldm_unet = _strip(full, "model.diffusion_model.")
    ldm_vae = _strip(full, "first_stage_model.")
    if not ldm_unet or not ldm_vae:
        raise ModelInitError(
            f"{source} has no model.diffusion_model.* / first_stage_model.* keys: not an SD 1.x "
            "single-file checkpoint"
        )
    unet_cfg = {**arch.unet_config_from_ldm(ldm_unet), **(unet_overrides or {})}
    vae_cfg = arch.vae_config_from_ldm(ldm_vae)
    return (
        unet_cfg,
        keymap.unet_ldm_to_diffusers(ldm_unet, unet_cfg),
        vae_cfg,
        keymap.vae_ldm_to_diffusers(ldm_vae, vae_cfg),
    )


def read_clip_tower(path: str | Path) -> StateDict:
    """open_clip tower keys (no prefix, no ``proj``) from an open_clip or transformers file."""
    state = _read_state_dict(Path(path))
    if any(k.startswith("visual.") for k in state):  # a full open_clip CLIP model
        state = _strip(state, "visual.")
    elif any("embeddings.patch_embedding" in k for k in state):  # transformers CLIPVisionModel
        state = keymap.clip_transformers_to_open_clip(
            {k: v for k, v in state.items() if "visual_projection" not in k}
        )
    elif any(k.startswith("tower.") for k in state):  # our encoder's layout
        state = _strip(state, "tower.")
    state.pop("proj", None)
    if "conv1.weight" not in state:
        raise ModelInitError(
            f"{path} is not a CLIP vision tower: expected open_clip keys (visual.conv1.weight) "
            "or transformers CLIPVisionModel keys"
        )
    return state


# ---------------------------------------------------------------------------------------------


def encoder_config(section: ModelSection, out_dim: int) -> EncoderConfig:
    """The encoder architecture: the published one, an open_clip backbone by name, or explicit
    EncoderConfig fields; ``out_dim`` always follows the UNet's cross-attention width."""
    values = {**section.encoder, "out_dim": out_dim}
    by_name = {"backbone", "out_dim", "mapper_layers", "mapper_heads"}
    if "backbone" in values and set(values) <= by_name:
        return EncoderConfig.from_open_clip(**values)
    return EncoderConfig.from_dict(values)


def _sd_model(section: ModelSection, inpaint: bool) -> PaintByExampleModel:
    unet_cfg, unet_sd, vae_cfg, vae_sd = read_sd(section.path, section.unet)
    unet_cfg = {k: v for k, v in unet_cfg.items() if not k.startswith("_")}
    if unet_cfg.get("cross_attention_dim") is None:
        raise ModelInitError(f"{section.path}: the UNet config has no cross_attention_dim")
    if inpaint:
        weight, bias = convert_inpaint_conv_in(unet_sd["conv_in.weight"], unet_sd["conv_in.bias"])
        unet_sd["conv_in.weight"], unet_sd["conv_in.bias"] = weight, bias
    else:
        unet_sd["conv_in.weight"] = expand_sd_conv_in(unet_sd["conv_in.weight"])
    unet_cfg["in_channels"] = 2 * LATENT_CHANNELS + 1
    enc_cfg = encoder_config(section, int(unet_cfg["cross_attention_dim"]))
    vae_cfg = {k: v for k, v in vae_cfg.items() if not k.startswith("_")}
    model = PaintByExampleModel(ModelConfigs(unet_cfg, vae_cfg, enc_cfg))
    _load(model.unet, unet_sd, "UNet", section.path)
    _load(model.vae, vae_sd, "VAE", section.path)
    init_like_official(model.encoder)
    _load(model.encoder.tower, read_clip_tower(section.clip), "CLIP tower", section.clip)
    return model


def _load(module: torch.nn.Module, state: StateDict, what: str, path: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelInitError(
            f"the {what} weights in {path} do not fit the architecture read from it: {exc}"
        ) from exc


def build_model(section: ModelSection, seed: int) -> PaintByExampleModel:
    """The full model at the start point, fp32 on the CPU."""
    torch.manual_seed(seed)
    if section.init == "random":
        configs = ModelConfigs.named(section.architecture)
        if section.unet:  # e.g. a wider miniature UNet (train.mini --preset gpu)
            configs = ModelConfigs({**configs.unet, **section.unet}, configs.vae, configs.encoder)
        if section.encoder:
            enc = encoder_config(section, configs.unet["cross_attention_dim"])
            configs = ModelConfigs(configs.unet, configs.vae, enc)
        vae_state = None
        if section.vae:
            from .vae import load_vae_weights

            vae_config, vae_state = load_vae_weights(section.vae)
            configs = ModelConfigs(configs.unet, vae_config, configs.encoder)
        model = PaintByExampleModel(configs)
        if vae_state is not None:
            _load(model.vae, vae_state, "VAE", section.vae)
        if section.clip:  # e.g. the miniature world's tower from `python -m train.tower`
            _load(model.encoder.tower, read_clip_tower(section.clip), "CLIP tower", section.clip)
        return model
    if section.init == "pbe":
        from exemplar_core.checkpoint import load_model

        return load_model(section.path).float()
    if section.init in ("sd", "sd_inpaint"):
        return _sd_model(section, inpaint=section.init == "sd_inpaint")
    raise ModelInitError(f"unknown model.init {section.init!r}")
