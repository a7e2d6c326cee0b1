"""LoRA training: peft adapters on the UNet (and the exemplar mapper), the LoRA file they make.

``inject_lora`` puts peft ``LoraConfig`` adapters on the UNet layers of the ``[lora]`` module
groups (``exemplar_core.lora.unet_target_modules``) and, with ``exemplar = "lora"``, on the
mapper's linear layers, and freezes everything else; per ``exemplar`` the exemplar head after
the mapper (``final_ln``, ``proj_out``, ``learnable_vector``), or the mapper too, is trained
whole. ``lora_state`` turns the adapted model into the tensors of a LoRA file (the layout of
``exemplar_core.lora``: kohya keys from peft's ``lora_A`` (down) and ``lora_B`` (up) weights,
whole-trained exemplar parts as differences to the base weights). After injection a wrapped
layer's base weight is ``<path>.base_layer.weight`` and its adapter ``<path>.lora_A.default
.weight`` / ``<path>.lora_B.default.weight``: those are the names in training checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from exemplar_core.lora import (
    EXEMPLAR_HEAD,
    exemplar_key,
    lora_pair,
    mapper_target_modules,
    unet_key,
    unet_target_modules,
)
from exemplar_core.model import PaintByExampleModel

from .config import LoraSection

ADAPTER = "default"  # peft's adapter name; one adapter per model
NETWORK_MODULE = "networks.lora"  # kohya's ss_network_module for a plain LoRA


def _lora_config(targets: list[str], cfg: LoraSection):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        init_lora_weights="gaussian" if cfg.init == "gaussian" else True,
        bias="none",
    )


def whole_trained(encoder: nn.Module, cfg: LoraSection) -> dict[str, nn.Parameter]:
    """The exemplar encoder's parameters trained whole in ``cfg.exemplar`` mode, by name."""
    if cfg.exemplar == "frozen":
        return {}
    parts = EXEMPLAR_HEAD if cfg.exemplar == "lora" else ("mapper", *EXEMPLAR_HEAD)
    return {
        name: p
        for name, p in encoder.named_parameters()
        if name.split(".")[0] in parts and ".lora_" not in name
    }


def exemplar_base_state(model: PaintByExampleModel, cfg: LoraSection) -> dict[str, Tensor]:
    """CPU fp32 copies of the whole-trained exemplar weights before training: the base the LoRA
    file's ``.diff`` entries are taken against."""
    return {
        n: p.detach().float().cpu().clone() for n, p in whole_trained(model.encoder, cfg).items()
    }


def inject_lora(model: PaintByExampleModel, cfg: LoraSection) -> list[nn.Parameter]:
    """Add peft adapters to ``model`` in place and freeze the rest; returns what is trained:
    the adapters' A and B weights (UNet, then mapper) and the whole-trained exemplar parameters.

    The adapters' A start random (from torch's global generator: seed it first), B at zero.
    """
    from peft import inject_adapter_in_model

    if cfg.unet_modules:
        targets = unet_target_modules(model.unet, cfg.unet_modules)
        inject_adapter_in_model(_lora_config(targets, cfg), model.unet, adapter_name=ADAPTER)
    if cfg.exemplar == "lora":
        targets = mapper_target_modules(model.encoder)
        inject_adapter_in_model(_lora_config(targets, cfg), model.encoder, adapter_name=ADAPTER)
    params = [p for n, p in model.named_parameters() if f".{ADAPTER}." in n and ".lora_" in n]
    params += list(whole_trained(model.encoder, cfg).values())
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """peft's adapted layers inside ``module``, by module path (as the targets were named)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def _pair(stem: str, layer: nn.Module) -> dict[str, Tensor]:
    down = layer.lora_A[ADAPTER].weight.detach().float().cpu().clone()
    up = layer.lora_B[ADAPTER].weight.detach().float().cpu().clone()
    return lora_pair(stem, down, up, layer.lora_alpha[ADAPTER])


def lora_state(
    model: PaintByExampleModel, cfg: LoraSection, base: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The LoRA file's tensors (fp32, CPU) from the model's current weights (swap the EMA in
    first to export it); ``base``: ``exemplar_base_state`` taken before training."""
    tensors: dict[str, Tensor] = {}
    for path, layer in lora_layers(model.unet).items():
        tensors.update(_pair(unet_key(path), layer))
    for path, layer in lora_layers(model.encoder).items():
        tensors.update(_pair(exemplar_key(path), layer))
    for name, p in whole_trained(model.encoder, cfg).items():
        # "proj_out.weight" -> pbe_exemplar.proj_out.diff, ".bias" -> .diff_b (ComfyUI's diff
        # convention); the bare parameter learnable_vector -> pbe_exemplar.learnable_vector.diff
        module, _, kind = name.rpartition(".")
        if kind == "bias":
            stem, suffix = module, "diff_b"
        else:
            stem, suffix = (module if kind == "weight" else name), "diff"
        tensors[f"{exemplar_key(stem)}.{suffix}"] = p.detach().float().cpu() - base[name]
    return tensors


def lora_metadata(model: PaintByExampleModel, cfg: LoraSection, base_model: str) -> dict[str, str]:
    """The LoRA file's descriptive metadata (the trainer adds training_config/training_step)."""
    configs = model.configs
    architecture = {"unet": configs.unet, "encoder": configs.encoder.to_dict()}
    return {
        "rank": str(cfg.rank),
        "alpha": repr(float(cfg.alpha)),
        "unet_modules": json.dumps(list(cfg.unet_modules)),
        "exemplar": cfg.exemplar,
        "base_model": base_model,
        "architecture": json.dumps(architecture, sort_keys=True),
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": repr(float(cfg.alpha)),
        "ss_network_module": NETWORK_MODULE,
    }


def base_model_name(init: str, path: str, architecture: str) -> str:
    """What the LoRA was trained on: the start checkpoint's file (or folder) name, or for
    random weights ``random:<architecture>``."""
    if path:
        return Path(path).name
    return f"{init}:{architecture}"


def merged_state(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s state dict with its adapters merged (peft's delta weights added to the base
    weights) and the plain key names of the unadapted module; unmerged tensors are shared."""
    state = {}
    for key, value in module.state_dict().items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    with torch.no_grad():
        for path, layer in lora_layers(module).items():
            key = f"{path}.weight"
            state[key] = state[key] + layer.get_delta_weight(ADAPTER).to(state[key].dtype)
    return state


def merged_model(model: PaintByExampleModel) -> PaintByExampleModel:
    """A plain model holding ``model``'s weights with the adapters merged in (for a single-file
    export). Weights no adapter touches are shared with ``model``, not copied."""
    with torch.device("meta"):
        merged = PaintByExampleModel(model.configs)
    merged.unet.load_state_dict(merged_state(model.unet), assign=True)
    merged.encoder.load_state_dict(merged_state(model.encoder), assign=True)
    merged.vae.load_state_dict(model.vae.state_dict(), assign=True)
    return merged.eval()


__all__ = [
    "ADAPTER",
    "base_model_name",
    "exemplar_base_state",
    "inject_lora",
    "lora_layers",
    "lora_metadata",
    "lora_state",
    "merged_model",
    "merged_state",
    "whole_trained",
]
