"""Paint-by-Example LoRA files: one ``.safetensors`` for the UNet and the exemplar side.

Layout (format version 1):

- **UNet**, in the kohya / sd-scripts layout that ComfyUI's stock ``LoraLoaderModelOnly`` reads:
  for the diffusers module path ``p`` of an adapted layer (``down_blocks.0.attentions.0.
  transformer_blocks.0.attn1.to_q``), ``lora_unet_<p with "." -> "_">.lora_down.weight``
  ([rank, in] or, for a convolution, [rank, in, kh, kw]), ``.lora_up.weight`` ([out, rank] or
  [out, rank, 1, 1]) and ``.alpha`` (a scalar). The update is ``(alpha / rank) * up @ down``.
- **Exemplar side**, under ``pbe_exemplar.`` followed by the module path inside the exemplar
  encoder (dots kept): LoRA on the mapper as ``pbe_exemplar.mapper.resblocks.0.attn.c_qkv
  .lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; fully trained parts as differences to
  the base weights, ComfyUI's ``diff`` convention: ``pbe_exemplar.proj_out.diff`` (weight),
  ``pbe_exemplar.proj_out.diff_b`` (bias), ``pbe_exemplar.learnable_vector.diff``.
- **Metadata** (strings): ``format`` = ``paint-by-example-lora``, ``format_version``, ``rank``,
  ``alpha``, ``unet_modules`` (JSON list of module groups), ``exemplar`` (``frozen``, ``full`` or
  ``lora``), ``base_model`` (what it was trained on), ``architecture`` (JSON: the UNet and encoder
  configs), ``training_config`` and ``training_step`` when the trainer wrote it, plus kohya's
  ``ss_network_dim`` / ``ss_network_alpha`` / ``ss_network_module`` for tools that list LoRAs.

A strength ``s`` scales every part linearly: ``W + s * delta``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

FORMAT = "paint-by-example-lora"
FORMAT_VERSION = "1"
UNET_PREFIX = "lora_unet_"
EXEMPLAR_PREFIX = "pbe_exemplar."

# Which UNet layers get adapters, by group (diffusers ``UNet2DConditionModel`` module paths).
UNET_MODULE_GROUPS: dict[str, re.Pattern[str]] = {
    "attention": re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"),
    "feed_forward": re.compile(r"\.ff\.net\.(0\.proj|2)$"),
    "projections": re.compile(r"\.attentions\.\d+\.(proj_in|proj_out)$"),
    "conv": re.compile(
        r"\.resnets\.\d+\.(conv1|conv2|conv_shortcut)$|\.(downsamplers|upsamplers)\.0\.conv$"
    ),
    "conv_in": re.compile(r"^conv_in$"),
}
DEFAULT_UNET_MODULES = ("attention",)

# The exemplar side: LoRA on the mapper's linear layers; the head around it is small and is
# trained whole ("lora" mode), or everything after the frozen CLIP tower is ("full" mode).
EXEMPLAR_MODES = ("frozen", "full", "lora")
MAPPER_LORA_MODULES = re.compile(
    r"^mapper\.resblocks\.\d+\.(attn\.c_qkv|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)$"
)
EXEMPLAR_HEAD = ("final_ln", "proj_out", "learnable_vector")


def unet_target_modules(unet: nn.Module, groups: Iterable[str]) -> list[str]:
    """The module paths of ``unet`` (a diffusers UNet) that the given groups adapt, in order."""
    groups = list(groups)
    unknown = [g for g in groups if g not in UNET_MODULE_GROUPS]
    if unknown:
        raise ValueError(
            f"unknown UNet module group(s) {unknown}; choose from {sorted(UNET_MODULE_GROUPS)}"
        )
    patterns = [UNET_MODULE_GROUPS[g] for g in groups]
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and any(p.search(name) for p in patterns)
    ]


def mapper_target_modules(encoder: nn.Module) -> list[str]:
    """The mapper's linear layers (module paths inside the exemplar encoder)."""
    return [
        name
        for name, module in encoder.named_modules()
        if isinstance(module, nn.Linear) and MAPPER_LORA_MODULES.search(name)
    ]


def unet_key(module_path: str) -> str:
    """The file's key stem for a UNet module path (kohya layout)."""
    return UNET_PREFIX + module_path.replace(".", "_")


def exemplar_key(module_path: str) -> str:
    """The file's key stem for a module path inside the exemplar encoder."""
    return EXEMPLAR_PREFIX + module_path


def lora_pair(stem: str, down: Tensor, up: Tensor, alpha: float) -> dict[str, Tensor]:
    """One adapted layer's three entries."""
    return {
        f"{stem}.lora_down.weight": down,
        f"{stem}.lora_up.weight": up,
        f"{stem}.alpha": torch.tensor(float(alpha)),
    }


def save_lora(
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    path: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Write a LoRA file atomically (floating tensors cast to ``dtype``; ``alpha`` stays fp32)."""
    from safetensors.torch import save_file

    from .checkpoint.container import CheckpointError, prepare_tensors, resolve_dtype
    from .files import atomic_write

    out = Path(path)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: a LoRA file must end in .safetensors")
    alphas = {k: v.float().reshape(()) for k, v in tensors.items() if k.endswith(".alpha")}
    rest = {k: v for k, v in tensors.items() if k not in alphas}
    prepared = {**prepare_tensors(rest, resolve_dtype(dtype)), **alphas}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **dict(metadata)}
    atomic_write(out, lambda tmp: save_file(prepared, str(tmp), meta), overwrite=overwrite)
    return out


__all__ = [
    "DEFAULT_UNET_MODULES",
    "EXEMPLAR_HEAD",
    "EXEMPLAR_MODES",
    "EXEMPLAR_PREFIX",
    "FORMAT",
    "FORMAT_VERSION",
    "UNET_MODULE_GROUPS",
    "UNET_PREFIX",
    "exemplar_key",
    "lora_pair",
    "mapper_target_modules",
    "save_lora",
    "unet_key",
    "unet_target_modules",
]
