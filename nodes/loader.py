"""Loader node: a Paint-by-Example checkpoint -> native MODEL, VAE and exemplar encoder."""

from __future__ import annotations

from comfy_api.latest import io

from ..exemplar_core import node_ids
from ..exemplar_core.dtypes import DTYPES
from . import folders, model_builder
from .checks import PaintByExampleInputError, check_widgets
from .types import CATEGORY, PbEEncoder

DTYPE_CHOICES = ["default", *DTYPES]
TOWER_LOAD = "load"
TOWER_SKIP = "skip (CLIP Vision + Exemplar Mapper)"


class Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.LOADER,
            display_name="Paint-by-Example Loader",
            category=CATEGORY,
            description=(
                "Loads a Paint-by-Example checkpoint from models/paint_by_example (the official "
                ".ckpt/.safetensors, this pack's single file, or a diffusers folder). The MODEL is "
                "ComfyUI-native with Paint-by-Example's input layout, so this pack's sampler and "
                "the stock InpaintModelConditioning + KSampler both work. Never downloads."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=folders.list_models(),
                    tooltip=(
                        "Checkpoint in models/paint_by_example (or a 'paint_by_example:' folder "
                        "from extra_model_paths.yaml). Refresh after adding files."
                    ),
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=DTYPE_CHOICES,
                    default="default",
                    tooltip=(
                        "Weight precision. 'default' lets ComfyUI pick for your device (fp16 on "
                        "most GPUs, fp32 on CPU); fp32 is the most exact, bf16/fp16 halve memory."
                    ),
                ),
                io.Combo.Input(
                    "clip_tower",
                    options=[TOWER_LOAD, TOWER_SKIP],
                    default=TOWER_LOAD,
                    optional=True,
                    tooltip=(
                        "load: the exemplar encoder with its own CLIP tower (Exemplar Encode). "
                        "skip: without it, for stock CLIPVisionLoader + CLIPVisionEncode + "
                        "Exemplar Mapper; saves the tower's memory (1.2 GB in fp32, 0.6 GB in "
                        "fp16 for the published model), Exemplar Encode then refuses it."
                    ),
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL",
                    tooltip="The Paint-by-Example UNet as a native ComfyUI model.",
                ),
                io.Vae.Output(
                    display_name="VAE", tooltip="The checkpoint's VAE (native ComfyUI VAE)."
                ),
                PbEEncoder.Output(
                    display_name="PBE_ENCODER",
                    tooltip="The exemplar image encoder; connect it to Exemplar Encode.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        # Only model_name: ComfyUI reports a failure here against every input this takes.
        try:
            folders.resolve(model_name)
        except folders.ModelNotFoundError as err:
            return str(err)
        return True

    @classmethod
    def execute(
        cls, model_name: str, weight_dtype: str = "default", clip_tower: str = TOWER_LOAD
    ) -> io.NodeOutput:
        from ..exemplar_core.checkpoint import CheckpointError, load_checkpoint

        # model_name: folders.resolve
        check_widgets(cls, {"weight_dtype": weight_dtype, "clip_tower": clip_tower})

        path = folders.resolve(model_name)
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:
            raise PaintByExampleInputError(
                f"{model_name} is not a Paint-by-Example checkpoint this pack can read: {err}"
            ) from err
        dtype = DTYPES.get(weight_dtype)
        model = model_builder.comfy_model(ckpt, dtype)
        vae = model_builder.comfy_vae(ckpt, dtype)
        encoder = model_builder.comfy_encoder(ckpt, dtype, tower=clip_tower == TOWER_LOAD)
        return io.NodeOutput(model, vae, encoder)
