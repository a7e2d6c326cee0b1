"""LoRA node: a Paint-by-Example LoRA file applied to the MODEL and to the exemplar encoder.

The UNet part goes through ComfyUI's own LoRA code (``comfy.sd.load_lora_for_models``, what the
stock ``LoraLoaderModelOnly`` calls), so strength, offloading and stacking behave as for any
LoRA. The exemplar part becomes weight patches on the encoder's ModelPatcher, in ComfyUI's own
``lora_up``/``lora_down`` and ``diff`` conventions, applied when the encoder is loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import comfy.lora
import comfy.model_patcher
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..exemplar_core import node_ids
from ..exemplar_core.checks import LORA_STRENGTH_MAX  # the stock LoraLoaderModelOnly's range
from ..exemplar_core.lora import EXEMPLAR_PREFIX, LoraError, LoraFile, check_lora, read_lora
from .checks import PaintByExampleInputError, check_widgets
from .model_builder import is_pbe_model, model_source
from .types import CATEGORY, ExemplarEncoderHandle, PbEEncoder

LORA_FOLDER = "loras"  # ComfyUI's own folder: one file serves this node and the stock loader
ENCODER_PREFIX = "encoder."  # the ExemplarEncoder inside types.EncoderContainer
PATCH_CALLBACK_KEY = "paint_by_example_lora"


def model_kind(model: object) -> str:
    """What a MODEL socket value is, for messages: ComfyUI's model config name (SD15, SDXL...)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    if config is None:
        return f"a {type(model).__name__}"
    return f"a MODEL of type {type(config).__name__}"


def unet_shapes(model: comfy.model_patcher.ModelPatcher) -> dict[str, tuple[int, ...]]:
    """A native MODEL's UNet weight shapes under their diffusers names (what LoRA files use)."""
    ldm = model.model.diffusion_model.state_dict()
    to_ldm = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    return {name: tuple(ldm[key].shape) for name, key in to_ldm.items() if key in ldm}


def encoder_shapes(handle: ExemplarEncoderHandle) -> dict[str, tuple[int, ...]]:
    """The exemplar encoder's parameter shapes by state-dict key."""
    return {key: tuple(value.shape) for key, value in handle.encoder.state_dict().items()}


def patch_unet(model, lora: LoraFile, strength: float, lora_name: str):
    """A clone of ``model`` with the file's UNet part as ComfyUI LoRA patches (the stock
    loader's path); ``model`` itself when the file has no UNet part."""
    tensors = lora.unet_tensors()
    if not tensors:
        return model
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    unmapped = sorted({stem for stem in lora.unet_stems() if stem not in key_map})
    if unmapped:  # check_lora passed, so this MODEL's key table is what differs
        raise PaintByExampleInputError(
            f"{lora_name}: ComfyUI has no UNet weight for {len(unmapped)} LoRA key(s) of this "
            f"MODEL (e.g. {unmapped[:3]}); the LoRA was made for another UNet layout"
        )
    patched, _ = comfy.sd.load_lora_for_models(model, None, tensors, strength, 0)
    return patched


def _non_leaf_keys(module: torch.nn.Module, keys: list[str]) -> list[str]:
    """Keys of parameters held by a module that also has sub-modules with parameters (the
    encoder's ``learnable_vector``): ComfyUI's ``ModelPatcher.load`` patches leaf modules only."""
    found = []
    for key in keys:
        owner_path, _, _ = key.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        if any(True for child in owner.children() for _ in child.parameters()):
            found.append(key)
    return found


def _patch_non_leaf_parameters(patcher, device_to, *_) -> None:
    """ON_LOAD callback: patch what ``ModelPatcher.load`` left out (once per load: a patched
    key has a backup until the patcher unpatches)."""
    for key in _non_leaf_keys(patcher.model, list(patcher.patches)):
        if key not in patcher.backup:
            patcher.patch_weight_to_device(key, device_to=device_to)


def patch_encoder(
    handle: ExemplarEncoderHandle, lora: LoraFile, strength: float, lora_name: str
) -> ExemplarEncoderHandle:
    """A new handle whose ModelPatcher (a clone) carries the file's exemplar part; ``handle`` is
    left as it was (ComfyUI caches node outputs). ``handle`` itself when there is none."""
    targets = lora.exemplar_targets()
    if not targets:
        return handle
    tensors = {k: v for k, v in lora.tensors.items() if k.startswith(EXEMPLAR_PREFIX)}
    key_map = {stem: ENCODER_PREFIX + key for stem, key in targets.items()}
    patches = comfy.lora.load_lora(tensors, key_map)
    patcher = handle.patcher.clone()
    applied = set(patcher.add_patches(patches, strength))
    missing = sorted(set(patches) - applied)
    if missing:
        raise PaintByExampleInputError(
            f"{lora_name}: the exemplar encoder has no weight for {missing[:3]}: the LoRA was "
            f"made for another exemplar encoder"
        )
    on_load = comfy.model_patcher.CallbacksMP.ON_LOAD
    if not patcher.get_callbacks(on_load, PATCH_CALLBACK_KEY):  # a stacked LoRA has it
        patcher.add_callback_with_key(on_load, PATCH_CALLBACK_KEY, _patch_non_leaf_parameters)
    return dataclasses.replace(handle, patcher=patcher)


class LoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.LORA_LOADER,
            display_name="Paint-by-Example LoRA Loader",
            category=CATEGORY,
            description=(
                "Applies a Paint-by-Example LoRA file from models/loras to the whole model: its "
                "UNet part to the MODEL through ComfyUI's own LoRA code (as the stock "
                "LoraLoaderModelOnly, which reads the same file but skips the exemplar part) "
                "and its exemplar part to the exemplar encoder. Chain several to stack them."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL of the Paint-by-Example Loader."),
                PbEEncoder.Input(
                    "encoder", tooltip="The PBE_ENCODER of the Paint-by-Example Loader."
                ),
                io.Combo.Input(
                    "lora_name",
                    options=folder_paths.get_filename_list(LORA_FOLDER),
                    tooltip="A Paint-by-Example LoRA (.safetensors) in models/loras, as the "
                    "trainer writes it. Refresh after adding files.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-LORA_STRENGTH_MAX,
                    max=LORA_STRENGTH_MAX,
                    step=0.01,
                    tooltip="How much of the LoRA to apply to both parts: 1 = as trained, 0 = "
                    "none, between = a blend; negative values subtract it.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL", tooltip="The MODEL with the LoRA's UNet part."
                ),
                PbEEncoder.Output(
                    display_name="PBE_ENCODER",
                    tooltip="The exemplar encoder with the LoRA's exemplar part; connect it to "
                    "Exemplar Encode.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls, model, encoder: ExemplarEncoderHandle, lora_name: str, strength: float = 1.0
    ) -> io.NodeOutput:
        check_widgets(cls, {"lora_name": lora_name, "strength": strength})
        if not is_pbe_model(model):
            raise PaintByExampleInputError(
                f"the LoRA Loader needs a Paint-by-Example MODEL, got {model_kind(model)}: "
                "connect the MODEL output of the Paint-by-Example Loader (for other models use "
                "the stock LoraLoaderModelOnly)"
            )
        if not isinstance(encoder, ExemplarEncoderHandle):
            raise PaintByExampleInputError(
                f"'encoder' must be the PBE_ENCODER output of the Paint-by-Example Loader, got "
                f"{type(encoder).__name__}"
            )
        path = folder_paths.get_full_path_or_raise(LORA_FOLDER, lora_name)
        source = model_source(model)
        target = f"the connected MODEL ({Path(source).name})" if source else "the connected MODEL"
        try:  # the core's messages name the file, what it holds and what the MODEL expects
            lora = read_lora(path)
            check_lora(lora, unet_shapes(model), encoder_shapes(encoder), target)
        except LoraError as err:
            raise PaintByExampleInputError(str(err)) from err
        return io.NodeOutput(
            patch_unet(model, lora, strength, lora_name),
            patch_encoder(encoder, lora, strength, lora_name),
        )
