"""Exemplar encode node: exemplar image(s) -> positive and negative CONDITIONING."""

from __future__ import annotations

from enum import Enum

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..exemplar_core import node_ids
from ..exemplar_core.preprocess import ExemplarError, preprocess_exemplar
from .checks import (
    PaintByExampleInputError,
    check_image,
    check_mask,
    check_model_output,
    check_widgets,
)
from .types import CATEGORY, NO_TOWER_MESSAGE, ExemplarEncoderHandle, PbEEncoder


class Combine(str, Enum):
    SEPARATE = "one per exemplar"
    MEAN = "mean"
    CONCAT = "concat tokens"


class ResizeMode(str, Enum):
    SQUASH = "squash"
    CENTER_CROP = "center_crop"


def combine_embeddings(embeds: torch.Tensor, how: Combine) -> torch.Tensor:
    """embeds [B, 1, D] -> [B, 1, D] (separate), [1, 1, D] (mean) or [1, B, D] (concat)."""
    if how == Combine.MEAN:
        return embeds.mean(dim=0, keepdim=True)
    if how == Combine.CONCAT:
        return embeds.reshape(1, -1, embeds.shape[-1])
    return embeds


def combine_input() -> io.Combo.Input:
    """The ``combine`` input of Exemplar Encode and the Exemplar Mapper."""
    return io.Combo.Input(
        "combine",
        options=Combine,
        default=Combine.SEPARATE,
        tooltip=(
            "Several exemplars: keep one condition per exemplar (batch), average "
            "their embeddings into one, or concatenate them as tokens of one condition."
        ),
    )


def conditioning_outputs() -> list[io.Conditioning.Output]:
    """The ``positive`` and ``negative`` outputs of Exemplar Encode and the Exemplar Mapper."""
    return [
        io.Conditioning.Output(
            display_name="positive",
            tooltip="The exemplar condition, [B, 1, D] (D = 768 for the published model).",
        ),
        io.Conditioning.Output(
            display_name="negative",
            tooltip="The learned unconditional vector (Paint-by-Example's negative).",
        ),
    ]


def check_encoder(encoder: object) -> None:
    """A PBE_ENCODER input that is not the Loader's encoder handle fails with a message."""
    if not isinstance(encoder, ExemplarEncoderHandle):
        raise PaintByExampleInputError(
            f"'encoder' must be the PBE_ENCODER output of the Paint-by-Example Loader, got "
            f"{type(encoder).__name__}"
        )


def conditioning_pair(
    handle: ExemplarEncoderHandle, embeds: torch.Tensor, combine: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """embeds [B, 1, D] -> (positive as ``combine`` asks, negative: the learned unconditional
    vector, one row per positive row). The encoder must be loaded (``mm.load_model_gpu``) so a
    LoRA's patch of the learned vector is in place. Exemplar Encode and the Exemplar Mapper."""
    positive = combine_embeddings(embeds, Combine(combine))
    with torch.inference_mode():  # finite: checked when the Loader built the encoder
        uncond = handle.encoder.learnable_vector.detach().float()
    negative = uncond.to(positive.device).expand(positive.shape[0], 1, -1).clone()
    return positive, negative


def encode_exemplars(
    handle: ExemplarEncoderHandle,
    images: torch.Tensor,
    exemplar_mask: torch.Tensor | None,
    mode: str,
    fill: float,
) -> torch.Tensor:
    """images [B, H, W, 3] 0..1 -> embeddings [B, 1, D] (float32, intermediate device)."""
    if not handle.has_tower:
        raise PaintByExampleInputError(NO_TOWER_MESSAGE)
    try:
        pixels = preprocess_exemplar(images, handle.config, exemplar_mask, mode=mode, fill=fill)
    except ExemplarError as err:
        raise PaintByExampleInputError(str(err)) from err
    mm.load_model_gpu(handle.patcher)
    device = handle.patcher.load_device
    with torch.inference_mode():
        embeds = handle.encoder(pixels.to(device=device, dtype=handle.dtype))
        check_model_output(embeds, "exemplar encoder", handle.source, handle.encoder)
    return embeds.float().to(mm.intermediate_device())


class ExemplarEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.EXEMPLAR_ENCODE,
            display_name="Paint-by-Example Exemplar Encode",
            category=CATEGORY,
            description=(
                "Encodes the exemplar (the object to paint in) into Paint-by-Example's one-token "
                "condition. Negative is the model's learned unconditional vector, not an empty "
                "image. An optional exemplar mask crops to the object and fills its background."
            ),
            inputs=[
                PbEEncoder.Input(
                    "encoder", tooltip="The exemplar encoder from the Paint-by-Example Loader."
                ),
                io.Image.Input(
                    "exemplar",
                    tooltip="Exemplar image(s), at least 16 px a side; a batch gives one "
                    "condition each unless combined.",
                ),
                combine_input(),
                io.Combo.Input(
                    "resize",
                    options=ResizeMode,
                    default=ResizeMode.SQUASH,
                    tooltip=(
                        "How the exemplar is fitted to the encoder's square input: squash (as the "
                        "official model was trained) or centre crop (diffusers' behaviour)."
                    ),
                ),
                io.Float.Input(
                    "background_fill",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Grey level (0 black .. 1 white) that replaces the background "
                    "outside the exemplar mask.",
                ),
                io.Mask.Input(
                    "exemplar_mask",
                    optional=True,
                    tooltip="Optional object mask of the exemplar (1 = object): crops to the "
                    "object's box and fills the rest with background_fill.",
                ),
            ],
            outputs=[
                *conditioning_outputs(),
            ],
        )

    @classmethod
    def execute(
        cls,
        encoder: ExemplarEncoderHandle,
        exemplar: torch.Tensor,
        combine: str = Combine.SEPARATE.value,
        resize: str = ResizeMode.SQUASH.value,
        background_fill: float = 1.0,
        exemplar_mask: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        check_widgets(cls, locals())
        check_encoder(encoder)
        images = check_image(exemplar, "exemplar")
        if exemplar_mask is not None:
            exemplar_mask = check_mask(exemplar_mask, "exemplar_mask")
        embeds = encode_exemplars(encoder, images, exemplar_mask, resize, background_fill)
        positive, negative = conditioning_pair(encoder, embeds, combine)
        return io.NodeOutput([[positive, {}]], [[negative, {}]])
