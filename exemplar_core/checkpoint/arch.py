"""Architecture inference: diffusers configs from weight shapes, ComfyUI constructor arguments.

Weight shapes -> configs (``unet_config_from_ldm``, ``vae_config_from_ldm``,
``encoder_config_from_weights``, ``encoder_config_from_clip_config``), and diffusers configs ->
the LDM / ComfyUI constructor arguments (``ldm_unet_kwargs``, ``ldm_vae_ddconfig``). Works on meta
tensors, so full-size shapes can be checked without weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import CLIP_MEAN, CLIP_STD, LATENT_SCALE, EncoderConfig
from ..model import SD1_UNET_CONFIG, SD1_VAE_CONFIG
from .container import Tensor
from .keymap import KeyMappingError, check_unet_config_supported, count_indexed, has_attention


def unet_config_from_ldm(
    state_dict: Mapping[str, Tensor], attention_head_dim: int = 8, sample_size: int = 64
) -> dict[str, Any]:
    """A diffusers UNet config read from LDM UNet weight shapes (keys without prefix).

    Heads cannot be read from weights: ``attention_head_dim`` (diffusers' name for the SD1 head
    count) defaults to the published 8. Gives exactly ``SD1_UNET_CONFIG`` for the published shapes.
    """
    keys = list(state_dict)
    if "input_blocks.0.0.weight" not in state_dict or "out.2.weight" not in state_dict:
        raise KeyMappingError(
            "UNet weights have no input_blocks.0.0.weight / out.2.weight; not an LDM UNet"
        )
    conv_in = state_dict["input_blocks.0.0.weight"]
    model_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    out_channels = int(state_dict["out.2.weight"].shape[0])
    n_input = count_indexed(keys, "input_blocks.")
    downsamplers = [n for n in range(n_input) if f"input_blocks.{n}.0.op.weight" in state_dict]
    levels = len(downsamplers) + 1
    if n_input % levels:
        raise KeyMappingError(
            f"UNet has {n_input} input blocks for {levels} levels; expected a multiple"
        )
    per_block = n_input // levels - 1
    channels, down_types, depth = [], [], set()
    context_dim = None
    linear = False
    for level in range(levels):
        first = 1 + level * (per_block + 1)
        channels.append(int(state_dict[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        attn = f"input_blocks.{first}.1."
        if f"{attn}proj_in.weight" in state_dict:
            down_types.append("CrossAttnDownBlock2D")
            depth.add(count_indexed(keys, f"{attn}transformer_blocks."))
            to_k = state_dict[f"{attn}transformer_blocks.0.attn2.to_k.weight"]
            context_dim = int(to_k.shape[1])
            linear = state_dict[f"{attn}proj_in.weight"].ndim == 2
        else:
            down_types.append("DownBlock2D")
    up_types = []
    for block in range(levels):
        n = block * (per_block + 1)
        has = f"output_blocks.{n}.1.proj_in.weight" in state_dict
        up_types.append("CrossAttnUpBlock2D" if has else "UpBlock2D")
    if (
        context_dim is None
        and "middle_block.1.transformer_blocks.0.attn2.to_k.weight" in state_dict
    ):
        context_dim = int(
            state_dict["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        )
    if context_dim is None:
        raise KeyMappingError("UNet has no cross-attention layers; not a Paint-by-Example UNet")
    config: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "block_out_channels": channels,
        "layers_per_block": per_block,
        "cross_attention_dim": context_dim,
        "attention_head_dim": attention_head_dim,
        "norm_num_groups": 32,
    }
    if channels[0] != model_channels:
        raise KeyMappingError(
            f"UNet first level has {channels[0]} channels but conv_in gives {model_channels}"
        )
    if len(depth) > 1:
        raise KeyMappingError(f"UNet attention depths differ between levels: {sorted(depth)}")
    if depth and depth != {1}:
        config["transformer_layers_per_block"] = depth.pop()
    if linear:
        config["use_linear_projection"] = True
    if config == SD1_UNET_CONFIG:
        return dict(SD1_UNET_CONFIG)
    return config


def _unet_heads(config: Mapping[str, Any]) -> tuple[int, int]:
    """(num_heads, num_head_channels) for the LDM UNet; exactly one of them is -1."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    if isinstance(heads, int):
        return heads, -1
    channels = list(config["block_out_channels"])
    types = list(config["down_block_types"])
    widths = {c // h for c, h, t in zip(channels, heads, types, strict=True) if has_attention(t)}
    if len(widths) != 1:
        raise KeyMappingError(
            f"UNet heads per level {list(heads)} give different head widths {sorted(widths)}; "
            f"the LDM UNet needs one head count or one head width"
        )
    return -1, widths.pop()


def ldm_unet_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the LDM / ComfyUI ``UNetModel`` for a diffusers UNet config.

    Depths are given per block as ComfyUI's ``UNetModel`` takes them (``transformer_depth`` per
    input res block, ``transformer_depth_output`` per output block, in ComfyUI's order).
    """
    check_unet_config_supported(config)
    channels = list(config["block_out_channels"])
    base = channels[0]
    per_block = int(config.get("layers_per_block", 2))
    depth = int(config.get("transformer_layers_per_block", 1))
    attends = [has_attention(t) for t in config["down_block_types"]]
    num_heads, head_channels = _unet_heads(config)
    t_in: list[int] = []
    t_out: list[int] = []
    for level_attends in attends:
        d = depth if level_attends else 0
        t_in += [d] * per_block
        t_out += [d] * (per_block + 1)
    return {
        "image_size": 32,  # unused by the UNet; the value the official yaml has
        "in_channels": int(config["in_channels"]),
        "out_channels": int(config.get("out_channels", 4)),
        "model_channels": base,
        "num_res_blocks": [per_block] * len(channels),
        "channel_mult": [c // base for c in channels],
        "transformer_depth": t_in,
        "transformer_depth_output": t_out,
        "transformer_depth_middle": depth,
        "num_heads": num_heads,
        "num_head_channels": head_channels,
        "context_dim": int(config["cross_attention_dim"]),
        "use_spatial_transformer": True,
        "use_linear_in_transformer": bool(config.get("use_linear_projection", False)),
        "legacy": False,
        "use_checkpoint": False,
        "adm_in_channels": None,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }


def vae_config_from_ldm(
    state_dict: Mapping[str, Tensor], sample_size: int = 512, scaling_factor: float = LATENT_SCALE
) -> dict[str, Any]:
    """A diffusers VAE config from LDM VAE weight shapes; exactly ``SD1_VAE_CONFIG`` for SD1."""
    keys = list(state_dict)
    required = ("encoder.conv_in.weight", "decoder.conv_out.weight", "post_quant_conv.weight")
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise KeyMappingError(f"VAE weights lack {missing}; not an LDM AutoencoderKL")
    levels = count_indexed(keys, "encoder.down.")
    per_block = count_indexed(keys, "encoder.down.0.block.")
    channels = [
        int(state_dict[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels)
    ]
    latent = int(state_dict["post_quant_conv.weight"].shape[0])
    config = {
        "in_channels": int(state_dict["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state_dict["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": per_block,
        "latent_channels": latent,
        "norm_num_groups": 32,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
    }
    if config == SD1_VAE_CONFIG:
        return dict(SD1_VAE_CONFIG)
    return config


def ldm_vae_ddconfig(config: Mapping[str, Any]) -> dict[str, Any]:
    """The LDM/ComfyUI ``AutoencoderKL`` ``ddconfig`` of a diffusers VAE config, plus ``embed_dim``.

    ComfyUI: ``comfy.sd.VAE(sd, config={"params": {"embed_dim": e, "ddconfig": rest}})``.
    """
    channels = list(config["block_out_channels"])
    latent = int(config.get("latent_channels", 4))
    return {
        "double_z": True,
        "z_channels": latent,
        "resolution": int(config.get("sample_size", 512)),
        "in_channels": int(config.get("in_channels", 3)),
        "out_ch": int(config.get("out_channels", 3)),
        "ch": channels[0],
        "ch_mult": [c // channels[0] for c in channels],
        "num_res_blocks": int(config.get("layers_per_block", 2)),
        "attn_resolutions": [],
        "dropout": 0.0,
        "embed_dim": latent,
    }


_PUBLISHED_TOWER = {"image_size": 224, "patch_size": 14, "width": 1024, "layers": 24}


def _backbone_name(values: Mapping[str, Any]) -> str:
    published = all(values[k] == v for k, v in _PUBLISHED_TOWER.items()) and values["quick_gelu"]
    return EncoderConfig().backbone if published else "custom-vit"


def encoder_config_from_weights(
    state_dict: Mapping[str, Tensor],
    heads: int | None = None,
    quick_gelu: bool = True,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> EncoderConfig:
    """An ``EncoderConfig`` read from our encoder keys' shapes.

    Heads cannot be read from weights: ``width // 64`` (CLIP's head width) unless given. The
    official checkpoint uses QuickGELU (OpenAI CLIP), hence the default.
    """
    width = int(state_dict["tower.class_embedding"].shape[0])
    patch = int(state_dict["tower.conv1.weight"].shape[-1])
    tokens = int(state_dict["tower.positional_embedding"].shape[0]) - 1
    grid = round(tokens**0.5)
    if grid * grid != tokens:
        raise KeyMappingError(f"CLIP tower has {tokens} patch positions, not a square grid")
    c_fc = state_dict["tower.transformer.resblocks.0.mlp.c_fc.weight"]
    values: dict[str, Any] = {
        "image_size": grid * patch,
        "patch_size": patch,
        "width": width,
        "layers": count_indexed(state_dict, "tower.transformer.resblocks."),
        "heads": heads if heads is not None else max(width // 64, 1),
        "mlp_ratio": float(c_fc.shape[0]) / width,
        "quick_gelu": quick_gelu,
        "mapper_layers": count_indexed(state_dict, "mapper.resblocks."),
        "mapper_heads": 1,
        "out_dim": int(state_dict["proj_out.weight"].shape[0]),
        "mean": tuple(mean),
        "std": tuple(std),
    }
    return EncoderConfig(backbone=_backbone_name(values), **values)


def encoder_config_from_clip_config(
    clip_config: Mapping[str, Any],
    state_dict: Mapping[str, Tensor],
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> EncoderConfig:
    """An ``EncoderConfig`` from a transformers ``CLIPVisionConfig`` dict (diffusers
    ``image_encoder/config.json``) checked against our encoder keys' shapes (mapper depth and
    output size come from the weights)."""
    act = clip_config.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise KeyMappingError(f"CLIP hidden_act {act!r} is not supported (quick_gelu or gelu)")
    derived = encoder_config_from_weights(
        state_dict,
        heads=int(clip_config.get("num_attention_heads", 0)) or None,
        quick_gelu=act == "quick_gelu",
        mean=mean,
        std=std,
    )
    for ours, theirs in (
        ("width", "hidden_size"),
        ("layers", "num_hidden_layers"),
        ("patch_size", "patch_size"),
        ("image_size", "image_size"),
    ):
        if theirs in clip_config and int(clip_config[theirs]) != getattr(derived, ours):
            raise KeyMappingError(
                f"image_encoder config.json says {theirs}={clip_config[theirs]} but the weights "
                f"have {ours}={getattr(derived, ours)}"
            )
    return derived
