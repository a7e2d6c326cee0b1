"""Checkpoint key mappings between the LDM/official, diffusers, transformers and open_clip layouts.

Every mapping is data: a list of rules built from the architecture config, applied by one small
engine. Nothing here touches files (see ``formats``) and every function works on meta tensors, so
full-size key sets can be checked without weights.

Layouts:

- UNet: LDM ``openaimodel.UNetModel`` keys (``input_blocks.N.M.*``, ``middle_block.*``,
  ``output_blocks.*``, ``time_embed.*``, ``out.*``) <-> diffusers ``UNet2DConditionModel`` keys,
  for any SD1-family size (``block_out_channels``, ``layers_per_block``, which levels attend).
- VAE: LDM ``AutoencoderKL`` keys (``encoder.down.N.block.M.*``, ``mid.attn_1.q`` as 1x1 convs, ...)
  <-> diffusers ``AutoencoderKL`` keys (``down_blocks``, ``mid_block.attentions.0.to_q`` linear).
- CLIP vision tower: transformers ``CLIPVisionModel`` keys, with or without the ``vision_model.``
  level (transformers 4 writes it, transformers 5 does not) <-> open_clip ``VisionTransformer`` keys
  (our encoder's ``tower.*``).
- Mapper: the official ``mapper.resblocks.N.*`` (our names) <-> diffusers
  ``PaintByExampleImageEncoder`` ``mapper.blocks.N.*``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .config import CLIP_MEAN, CLIP_STD, LATENT_SCALE, EncoderConfig
from .model import SD1_UNET_CONFIG, SD1_VAE_CONFIG

Tensor = torch.Tensor
StateDict = dict[str, Tensor]
Direction = Literal["to_diffusers", "to_ldm"]


class KeyMappingError(ValueError):
    """A state dict does not fit the layout a mapping expects (keys left over or missing)."""


def _describe_keys(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{shown}{more}"


def count_indexed(keys: Iterable[str], prefix: str) -> int:
    """How many consecutive ``prefix{i}.`` indices exist (0-based), e.g. blocks of a ModuleList."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    n = 0
    while n in found:
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# Prefix rules: UNet and VAE
# --------------------------------------------------------------------------------------------

# Sub-module renames inside one LDM ResBlock (UNet) -> diffusers ResnetBlock2D.
UNET_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
# The same inside the VAE (LDM ``ResnetBlock``).
VAE_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
# VAE mid attention: LDM 1x1 convs -> diffusers linears.
VAE_ATTENTION = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}
# diffusers < 0.14 saved the VAE attention under older names; accepted when reading diffusers.
VAE_ATTENTION_DEPRECATED = {
    "norm": "group_norm",
    "q": "query",
    "k": "key",
    "v": "value",
    "proj_out": "proj_attn",
}


@dataclass(frozen=True)
class PrefixRule:
    """Keys under ``ldm`` map to keys under ``diffusers``.

    ``sub`` renames the sub-module part (``None``: the rest of the key is kept); ``conv1x1`` marks
    weights that are 1x1 convolutions in LDM and linear layers in diffusers.
    """

    ldm: str
    diffusers: str
    sub: Mapping[str, str] | None = None
    conv1x1: bool = False


def _map_key(key: str, rules: list[PrefixRule], direction: Direction) -> tuple[str, bool] | None:
    for rule in rules:
        src, dst = (
            (rule.ldm, rule.diffusers)
            if direction == "to_diffusers"
            else (
                rule.diffusers,
                rule.ldm,
            )
        )
        if not key.startswith(src):
            continue
        rest = key[len(src) :]
        if rule.sub is None:
            return dst + rest, False
        module, _, param = rest.rpartition(".")
        table = rule.sub if direction == "to_diffusers" else {v: k for k, v in rule.sub.items()}
        if module not in table:
            return None
        reshape = rule.conv1x1 and param == "weight" and module not in ("norm", "group_norm")
        return f"{dst}{table[module]}.{param}", reshape
    return None


def apply_prefix_rules(
    state_dict: Mapping[str, Tensor], rules: list[PrefixRule], direction: Direction, what: str
) -> StateDict:
    """Rename every key by the first rule whose prefix matches; raise if any key is left over."""
    # Longest prefix first, so "input_blocks.1." never shadows "input_blocks.10.".
    ordered = sorted(
        rules, key=lambda r: -len(r.ldm if direction == "to_diffusers" else r.diffusers)
    )
    out: StateDict = {}
    leftover = []
    for key, tensor in state_dict.items():
        mapped = _map_key(key, ordered, direction)
        if mapped is None:
            leftover.append(key)
            continue
        new_key, reshape = mapped
        if reshape:
            if direction == "to_diffusers" and tensor.ndim == 4:
                tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
            elif direction == "to_ldm" and tensor.ndim == 2:
                tensor = tensor.reshape(tensor.shape[0], tensor.shape[1], 1, 1)
        out[new_key] = tensor
    if leftover:
        target = "diffusers" if direction == "to_diffusers" else "LDM"
        raise KeyMappingError(
            f"{what}: {len(leftover)} key(s) have no place in the {target} layout for this "
            f"architecture: {_describe_keys(leftover)}. The weights do not match the config "
            f"(another architecture, or a config that does not describe these weights)."
        )
    return out


def _has_attention(block_type: str) -> bool:
    return block_type.startswith("CrossAttn")


def unet_rules(config: Mapping[str, Any]) -> list[PrefixRule]:
    """LDM <-> diffusers prefix rules for a diffusers ``UNet2DConditionModel`` config (SD1-like)."""
    check_unet_config_supported(config)
    channels = list(config["block_out_channels"])
    per_block = int(config.get("layers_per_block", 2))
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    levels = len(channels)
    rules = [
        PrefixRule("time_embed.0.", "time_embedding.linear_1."),
        PrefixRule("time_embed.2.", "time_embedding.linear_2."),
        PrefixRule("input_blocks.0.0.", "conv_in."),
        PrefixRule("out.0.", "conv_norm_out."),
        PrefixRule("out.2.", "conv_out."),
        PrefixRule("middle_block.0.", "mid_block.resnets.0.", UNET_RESNET),
        PrefixRule("middle_block.1.", "mid_block.attentions.0."),
        PrefixRule("middle_block.2.", "mid_block.resnets.1.", UNET_RESNET),
    ]
    for level in range(levels):
        for j in range(per_block):
            n = 1 + level * (per_block + 1) + j
            rules.append(
                PrefixRule(f"input_blocks.{n}.0.", f"down_blocks.{level}.resnets.{j}.", UNET_RESNET)
            )
            if _has_attention(down_types[level]):
                rules.append(
                    PrefixRule(f"input_blocks.{n}.1.", f"down_blocks.{level}.attentions.{j}.")
                )
        if level < levels - 1:
            n = 1 + level * (per_block + 1) + per_block
            rules.append(
                PrefixRule(f"input_blocks.{n}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.")
            )
    for block in range(levels):
        attends = _has_attention(up_types[block])
        for j in range(per_block + 1):
            n = block * (per_block + 1) + j
            rules.append(
                PrefixRule(f"output_blocks.{n}.0.", f"up_blocks.{block}.resnets.{j}.", UNET_RESNET)
            )
            if attends:
                rules.append(
                    PrefixRule(f"output_blocks.{n}.1.", f"up_blocks.{block}.attentions.{j}.")
                )
        if block < levels - 1:
            n = block * (per_block + 1) + per_block
            slot = 2 if attends else 1
            rules.append(
                PrefixRule(
                    f"output_blocks.{n}.{slot}.conv.", f"up_blocks.{block}.upsamplers.0.conv."
                )
            )
    return rules


# Config entries whose non-default values change the weights in ways the LDM UNet cannot express.
_UNET_UNSUPPORTED: dict[str, Any] = {
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "encoder_hid_dim": None,
    "time_cond_proj_dim": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "resnet_time_scale_shift": "default",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "reverse_transformer_layers_per_block": None,
}


def check_unet_config_supported(config: Mapping[str, Any]) -> None:
    """Raise ``KeyMappingError`` when a diffusers UNet config is outside the SD1 family."""
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        if key not in config:
            raise KeyMappingError(f"UNet config has no {key!r}; it is not a UNet2DConditionModel")
    for key, expected in _UNET_UNSUPPORTED.items():
        value = config.get(key, expected)
        if value != expected and not (key == "mid_block_type" and value is None):
            raise KeyMappingError(
                f"UNet config has {key}={value!r}; only {expected!r} (the SD1 family) is supported"
            )
    allowed_down = {"CrossAttnDownBlock2D", "DownBlock2D"}
    allowed_up = {"CrossAttnUpBlock2D", "UpBlock2D"}
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    if not set(down) <= allowed_down or not set(up) <= allowed_up:
        raise KeyMappingError(
            f"UNet block types {down} / {up} are not supported; expected {sorted(allowed_down)} "
            f"and {sorted(allowed_up)}"
        )
    if not (len(down) == len(up) == len(config["block_out_channels"])):
        raise KeyMappingError(
            "UNet config: down/up block types and block_out_channels differ in length"
        )
    if not isinstance(config.get("layers_per_block", 2), int):
        raise KeyMappingError("UNet config: per-level layers_per_block lists are not supported")
    if not isinstance(config.get("transformer_layers_per_block", 1), int):
        raise KeyMappingError(
            "UNet config: per-level transformer_layers_per_block is not supported"
        )


def unet_ldm_to_diffusers(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> StateDict:
    """LDM UNet keys (no ``model.diffusion_model.`` prefix) -> diffusers keys."""
    return apply_prefix_rules(state_dict, unet_rules(config), "to_diffusers", "UNet")


def unet_diffusers_to_ldm(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> StateDict:
    """diffusers ``UNet2DConditionModel`` keys -> LDM UNet keys (no prefix)."""
    return apply_prefix_rules(state_dict, unet_rules(config), "to_ldm", "UNet")


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
    widths = {c // h for c, h, t in zip(channels, heads, types, strict=True) if _has_attention(t)}
    if len(widths) != 1:
        raise KeyMappingError(
            f"UNet heads per level {list(heads)} give different head widths {sorted(widths)}; "
            f"the LDM UNet needs one head count or one head width"
        )
    return -1, widths.pop()


def ldm_unet_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the LDM / ComfyUI ``UNetModel`` for a diffusers UNet config.

    Depths are given per block as ComfyUI's ``UNetModel`` takes them (``transformer_depth`` per
    input res block, ``transformer_depth_output`` per output block, in ComfyUI's order); the
    official yaml form with ``attention_resolutions`` is ``ldm_unet_params``.
    """
    check_unet_config_supported(config)
    channels = list(config["block_out_channels"])
    base = channels[0]
    per_block = int(config.get("layers_per_block", 2))
    depth = int(config.get("transformer_layers_per_block", 1))
    attends = [_has_attention(t) for t in config["down_block_types"]]
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


def ldm_unet_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The official ``configs/v1.yaml`` ``unet_config.params`` form (``attention_resolutions``)."""
    kwargs = ldm_unet_kwargs(config)
    attends = [_has_attention(t) for t in config["down_block_types"]]
    return {
        "image_size": 32,
        "in_channels": kwargs["in_channels"],
        "out_channels": kwargs["out_channels"],
        "model_channels": kwargs["model_channels"],
        "attention_resolutions": [2**i for i, a in enumerate(attends) if a][::-1],
        "num_res_blocks": kwargs["num_res_blocks"][0],
        "channel_mult": kwargs["channel_mult"],
        "num_heads": kwargs["num_heads"],
        "num_head_channels": kwargs["num_head_channels"],
        "use_spatial_transformer": True,
        "transformer_depth": kwargs["transformer_depth_middle"],
        "context_dim": kwargs["context_dim"],
        "use_linear_in_transformer": kwargs["use_linear_in_transformer"],
        "legacy": False,
    }


def vae_rules(config: Mapping[str, Any], deprecated_attention: bool = False) -> list[PrefixRule]:
    """LDM <-> diffusers prefix rules for a diffusers ``AutoencoderKL`` config."""
    for key, expected in (
        ("use_quant_conv", True),
        ("use_post_quant_conv", True),
        ("mid_block_add_attention", True),
    ):
        if config.get(key, expected) != expected:
            raise KeyMappingError(
                f"VAE config has {key}={config[key]!r}; only {expected!r} is supported"
            )
    levels = len(config["block_out_channels"])
    per_block = int(config.get("layers_per_block", 2))
    attention = VAE_ATTENTION_DEPRECATED if deprecated_attention else VAE_ATTENTION
    rules = [
        PrefixRule("quant_conv.", "quant_conv."),
        PrefixRule("post_quant_conv.", "post_quant_conv."),
    ]
    for part in ("encoder", "decoder"):
        rules += [
            PrefixRule(f"{part}.conv_in.", f"{part}.conv_in."),
            PrefixRule(f"{part}.norm_out.", f"{part}.conv_norm_out."),
            PrefixRule(f"{part}.conv_out.", f"{part}.conv_out."),
            PrefixRule(f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.", VAE_RESNET),
            PrefixRule(f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.", VAE_RESNET),
            PrefixRule(
                f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.", attention, conv1x1=True
            ),
        ]
    for level in range(levels):
        for j in range(per_block):
            rules.append(
                PrefixRule(
                    f"encoder.down.{level}.block.{j}.",
                    f"encoder.down_blocks.{level}.resnets.{j}.",
                    VAE_RESNET,
                )
            )
        if level < levels - 1:
            rules.append(
                PrefixRule(
                    f"encoder.down.{level}.downsample.conv.",
                    f"encoder.down_blocks.{level}.downsamplers.0.conv.",
                )
            )
        block = levels - 1 - level
        for j in range(per_block + 1):
            rules.append(
                PrefixRule(
                    f"decoder.up.{level}.block.{j}.",
                    f"decoder.up_blocks.{block}.resnets.{j}.",
                    VAE_RESNET,
                )
            )
        if level > 0:
            rules.append(
                PrefixRule(
                    f"decoder.up.{level}.upsample.conv.",
                    f"decoder.up_blocks.{block}.upsamplers.0.conv.",
                )
            )
    return rules


def vae_ldm_to_diffusers(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> StateDict:
    """LDM VAE keys (no ``first_stage_model.`` prefix) -> diffusers ``AutoencoderKL`` keys."""
    return apply_prefix_rules(state_dict, vae_rules(config), "to_diffusers", "VAE")


def vae_diffusers_to_ldm(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> StateDict:
    """diffusers ``AutoencoderKL`` keys (current or pre-0.14 attention names) -> LDM VAE keys."""
    deprecated = any(".attentions.0.query." in k for k in state_dict)
    return apply_prefix_rules(state_dict, vae_rules(config, deprecated), "to_ldm", "VAE")


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


# --------------------------------------------------------------------------------------------
# Key rules with fusing: CLIP vision tower and mapper
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusedRule:
    """``ours`` is the concatenation along dim 0 of ``theirs`` (one key: a plain rename)."""

    ours: str
    theirs: tuple[str, ...]


def _linear_pairs(ours: str, theirs: str) -> list[FusedRule]:
    return [FusedRule(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in ("weight", "bias")]


def clip_vision_rules(layers: int) -> list[FusedRule]:
    """open_clip ``VisionTransformer`` keys <-> transformers ``CLIPVisionModel`` keys (no level)."""
    rules = [
        FusedRule("class_embedding", ("embeddings.class_embedding",)),
        FusedRule("conv1.weight", ("embeddings.patch_embedding.weight",)),
        FusedRule("positional_embedding", ("embeddings.position_embedding.weight",)),
        *_linear_pairs("ln_pre", "pre_layrnorm"),
        *_linear_pairs("ln_post", "post_layernorm"),
    ]
    for i in range(layers):
        ours, theirs = f"transformer.resblocks.{i}", f"encoder.layers.{i}"
        for p in ("weight", "bias"):
            qkv = tuple(f"{theirs}.self_attn.{n}_proj.{p}" for n in "qkv")
            rules.append(FusedRule(f"{ours}.attn.in_proj_{p}", qkv))
        rules += _linear_pairs(f"{ours}.ln_1", f"{theirs}.layer_norm1")
        rules += _linear_pairs(f"{ours}.attn.out_proj", f"{theirs}.self_attn.out_proj")
        rules += _linear_pairs(f"{ours}.ln_2", f"{theirs}.layer_norm2")
        rules += _linear_pairs(f"{ours}.mlp.c_fc", f"{theirs}.mlp.fc1")
        rules += _linear_pairs(f"{ours}.mlp.c_proj", f"{theirs}.mlp.fc2")
    return rules


def mapper_rules(layers: int) -> list[FusedRule]:
    """Official / our ``mapper.resblocks.N.*`` <-> diffusers ``mapper.blocks.N.*``.

    ``c_qkv`` is [q; k; v] by rows, exact for the single-head mapper Paint-by-Example uses.
    """
    rules = []
    for i in range(layers):
        ours, theirs = f"mapper.resblocks.{i}", f"mapper.blocks.{i}"
        for p in ("weight", "bias"):
            qkv = tuple(f"{theirs}.attn1.to_{n}.{p}" for n in "qkv")
            rules.append(FusedRule(f"{ours}.attn.c_qkv.{p}", qkv))
        rules += _linear_pairs(f"{ours}.ln_1", f"{theirs}.norm1")
        rules += _linear_pairs(f"{ours}.attn.c_proj", f"{theirs}.attn1.to_out.0")
        rules += _linear_pairs(f"{ours}.ln_2", f"{theirs}.norm3")
        rules += _linear_pairs(f"{ours}.mlp.c_fc", f"{theirs}.ff.net.0.proj")
        rules += _linear_pairs(f"{ours}.mlp.c_proj", f"{theirs}.ff.net.2")
    return rules


def apply_fused_rules(
    state_dict: Mapping[str, Tensor],
    rules: list[FusedRule],
    direction: Literal["to_ours", "to_theirs"],
    what: str,
) -> StateDict:
    """Apply fused rules; raise ``KeyMappingError`` naming missing and left-over keys."""
    out: StateDict = {}
    used: set[str] = set()
    missing: list[str] = []
    for rule in rules:
        if direction == "to_ours":
            if not all(k in state_dict for k in rule.theirs):
                missing += [k for k in rule.theirs if k not in state_dict]
                continue
            parts = [state_dict[k] for k in rule.theirs]
            out[rule.ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            used.update(rule.theirs)
        else:
            if rule.ours not in state_dict:
                missing.append(rule.ours)
                continue
            tensor = state_dict[rule.ours]
            if len(rule.theirs) == 1:
                out[rule.theirs[0]] = tensor
            else:
                if tensor.shape[0] % len(rule.theirs):
                    raise KeyMappingError(
                        f"{what}: {rule.ours} has {tensor.shape[0]} rows, not divisible by "
                        f"{len(rule.theirs)}"
                    )
                for key, chunk in zip(
                    rule.theirs, tensor.chunk(len(rule.theirs), dim=0), strict=True
                ):
                    out[key] = chunk
            used.add(rule.ours)
    leftover = [k for k in state_dict if k not in used]
    if missing or leftover:
        problems = []
        if missing:
            problems.append(f"missing {_describe_keys(missing)}")
        if leftover:
            problems.append(f"unexpected {_describe_keys(leftover)}")
        raise KeyMappingError(
            f"{what}: keys do not match the expected layout: {'; '.join(problems)}"
        )
    return out


CLIP_DROPPED = ("embeddings.position_ids",)


def strip_vision_model_level(state_dict: Mapping[str, Tensor]) -> StateDict:
    """transformers 4 keys (``vision_model.*``) -> transformers 5 keys; ``position_ids`` dropped."""
    out: StateDict = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix("vision_model.")
        if key not in CLIP_DROPPED:
            out[key] = tensor
    return out


def clip_transformers_to_open_clip(state_dict: Mapping[str, Tensor]) -> StateDict:
    """transformers ``CLIPVisionModel`` keys (either version) -> open_clip tower keys."""
    flat = strip_vision_model_level(state_dict)
    layers = count_indexed(flat, "encoder.layers.")
    return apply_fused_rules(flat, clip_vision_rules(layers), "to_ours", "CLIP vision tower")


def clip_open_clip_to_transformers(
    state_dict: Mapping[str, Tensor], vision_model_level: bool = True
) -> StateDict:
    """open_clip tower keys -> transformers ``CLIPVisionModel`` keys ."""
    layers = count_indexed(state_dict, "transformer.resblocks.")
    out = apply_fused_rules(state_dict, clip_vision_rules(layers), "to_theirs", "CLIP vision tower")
    if vision_model_level:
        out = {f"vision_model.{k}": v for k, v in out.items()}
    return out


# The encoder's top-level modules outside tower and mapper: ours -> (official, diffusers).
ENCODER_HEAD = {
    "final_ln.weight": ("cond_stage_model.final_ln.weight", "final_layer_norm.weight"),
    "final_ln.bias": ("cond_stage_model.final_ln.bias", "final_layer_norm.bias"),
    "proj_out.weight": ("proj_out.weight", "proj_out.weight"),
    "proj_out.bias": ("proj_out.bias", "proj_out.bias"),
    "learnable_vector": ("learnable_vector", "uncond_vector"),
}
OFFICIAL_TOWER_PREFIX = "cond_stage_model.transformer."
OFFICIAL_MAPPER_PREFIX = "cond_stage_model."  # + "mapper.resblocks.N..." (our names)


def _split_encoder(state_dict: Mapping[str, Tensor]) -> tuple[StateDict, StateDict, StateDict]:
    """Our encoder keys -> (tower without prefix, mapper with ``mapper.``, head keys)."""
    tower, mapper, head = {}, {}, {}
    for key, tensor in state_dict.items():
        if key.startswith("tower."):
            tower[key.removeprefix("tower.")] = tensor
        elif key.startswith("mapper."):
            mapper[key] = tensor
        else:
            head[key] = tensor
    return tower, mapper, head


def _head_map(head: Mapping[str, Tensor], column: int, to_ours: bool, what: str) -> StateDict:
    table = {ours: names[column] for ours, names in ENCODER_HEAD.items()}
    if to_ours:
        table = {v: k for k, v in table.items()}
    missing = [k for k in table if k not in head]
    extra = [k for k in head if k not in table]
    if missing or extra:
        raise KeyMappingError(
            f"{what}: expected {sorted(table)}; missing {missing or 'none'}, unexpected "
            f"{_describe_keys(extra) if extra else 'none'}"
        )
    return {table[k]: v for k, v in head.items()}


def encoder_to_official(state_dict: Mapping[str, Tensor]) -> StateDict:
    """Our encoder keys -> official LDM keys (``cond_stage_model.transformer.vision_model.*``)."""
    tower, mapper, head = _split_encoder(state_dict)
    out = {
        OFFICIAL_TOWER_PREFIX + k: v
        for k, v in clip_open_clip_to_transformers(tower, vision_model_level=True).items()
    }
    out.update({OFFICIAL_MAPPER_PREFIX + k: v for k, v in mapper.items()})
    out.update(_head_map(head, 0, to_ours=False, what="encoder head"))
    return out


def encoder_from_official(
    tower: Mapping[str, Tensor], mapper: Mapping[str, Tensor], head: Mapping[str, Tensor]
) -> StateDict:
    """Official parts -> our encoder keys.

    ``tower``: keys after ``cond_stage_model.transformer.`` (with or without ``vision_model.``);
    ``mapper``: keys after ``cond_stage_model.`` (``mapper.resblocks.N...``); ``head``: official
    ``cond_stage_model.final_ln.*``, ``proj_out.*``, ``learnable_vector``.
    """
    out = {f"tower.{k}": v for k, v in clip_transformers_to_open_clip(tower).items()}
    layers = count_indexed(mapper, "mapper.resblocks.")
    expected = {r.ours for r in mapper_rules(layers)}
    if set(mapper) != expected:
        raise KeyMappingError(
            f"mapper: unexpected keys {_describe_keys(set(mapper) - expected) or 'none'}, "
            f"missing {_describe_keys(expected - set(mapper)) or 'none'}"
        )
    out.update(mapper)
    out.update(_head_map(head, 0, to_ours=True, what="encoder head"))
    return out


def encoder_to_diffusers(
    state_dict: Mapping[str, Tensor], vision_model_level: bool = True
) -> StateDict:
    """Our encoder keys -> diffusers ``PaintByExampleImageEncoder`` keys.

    ``vision_model_level``: True writes ``model.vision_model.*`` (transformers 4, what the Hub
    holds); False writes ``model.*`` (transformers 5).
    """
    tower, mapper, head = _split_encoder(state_dict)
    out = {
        f"model.{k}": v
        for k, v in clip_open_clip_to_transformers(tower, vision_model_level).items()
    }
    layers = count_indexed(mapper, "mapper.resblocks.")
    out.update(apply_fused_rules(mapper, mapper_rules(layers), "to_theirs", "mapper"))
    out.update(_head_map(head, 1, to_ours=False, what="encoder head"))
    return out


def encoder_from_diffusers(state_dict: Mapping[str, Tensor]) -> StateDict:
    """diffusers ``PaintByExampleImageEncoder`` keys (``model.[vision_model.]*``) -> ours."""
    tower, mapper, head = {}, {}, {}
    for key, tensor in state_dict.items():
        if key.startswith("model."):
            tower[key.removeprefix("model.")] = tensor
        elif key.startswith("mapper."):
            mapper[key] = tensor
        else:
            head[key] = tensor
    out = {f"tower.{k}": v for k, v in clip_transformers_to_open_clip(tower).items()}
    layers = count_indexed(mapper, "mapper.blocks.")
    out.update(apply_fused_rules(mapper, mapper_rules(layers), "to_ours", "mapper"))
    out.update(_head_map(head, 1, to_ours=True, what="encoder head"))
    return out


# --------------------------------------------------------------------------------------------
# Encoder configs
# --------------------------------------------------------------------------------------------

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
