"""Checkpoint key mappings between the LDM/official, diffusers, transformers and open_clip layouts.

Every mapping is data: a list of rules built from the architecture config, applied by one small
engine. Nothing here touches files (see ``checkpoint.safe_read``) or infers an architecture (see
``checkpoint.arch``); every function works on meta tensors, so full-size key sets can be checked
without weights.

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

from .container import StateDict, Tensor

Direction = Literal["to_diffusers", "to_ldm"]


class KeyMappingError(ValueError):
    """A state dict does not fit the layout a mapping expects (keys left over or missing)."""


def describe_keys(keys: Iterable[str], limit: int = 8) -> str:
    """The first ``limit`` keys, sorted, and how many more (for error messages)."""
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
            f"architecture: {describe_keys(leftover)}. The weights do not match the config "
            f"(another architecture, or a config that does not describe these weights)."
        )
    return out


def has_attention(block_type: str) -> bool:
    """Whether a diffusers down/up block type has cross-attention layers."""
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
            if has_attention(down_types[level]):
                rules.append(
                    PrefixRule(f"input_blocks.{n}.1.", f"down_blocks.{level}.attentions.{j}.")
                )
        if level < levels - 1:
            n = 1 + level * (per_block + 1) + per_block
            rules.append(
                PrefixRule(f"input_blocks.{n}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.")
            )
    for block in range(levels):
        attends = has_attention(up_types[block])
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
            problems.append(f"missing {describe_keys(missing)}")
        if leftover:
            problems.append(f"unexpected {describe_keys(leftover)}")
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
            f"{describe_keys(extra) if extra else 'none'}"
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
            f"mapper: unexpected keys {describe_keys(set(mapper) - expected) or 'none'}, "
            f"missing {describe_keys(expected - set(mapper)) or 'none'}"
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
