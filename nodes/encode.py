"""Exemplar encode node: exemplar image(s) -> positive and negative CONDITIONING."""

from __future__ import annotations

import logging
from enum import Enum

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..exemplar_core import node_ids
from ..exemplar_core.checks import EXEMPLAR_EXPAND_MAX
from ..exemplar_core.preprocess import (
    ExemplarError,
    frame_exemplar,
    mask_looks_inverted,
    normalize,
)
from .checks import (
    PaintByExampleInputError,
    check_image,
    check_mask,
    check_model_output,
    check_widgets,
)
from .types import (
    CATEGORY,
    EXEMPLAR_VIEW_KEY,
    NO_TOWER_MESSAGE,
    ExemplarEncoderHandle,
    PbEEncoder,
)

log = logging.getLogger(__name__)


class Combine(str, Enum):
    SEPARATE = "one per exemplar"
    MEAN = "mean"
    CONCAT = "concat tokens"


class ResizeMode(str, Enum):
    SQUASH = "squash"
    CENTER_CROP = "center_crop"
    PAD_TO_SQUARE = "pad_to_square"


class MaskMarks(str, Enum):
    """What the 1s of ``exemplar_mask`` mark. LoadImage's MASK of a transparent PNG marks the
    background (1 = transparent), the opposite of the object mask the core expects."""

    OBJECT = "object"
    BACKGROUND = "background"


def object_mask_of(exemplar_mask: torch.Tensor, marks: MaskMarks) -> torch.Tensor | None:
    """exemplar_mask [B, H, W] as given -> object mask (1 = object), or None for a background
    mask that marks nothing (LoadImage's 64x64 zeros for an image without transparency)."""
    if marks == MaskMarks.OBJECT:
        if not bool((exemplar_mask >= 0.5).any()):
            raise PaintByExampleInputError(
                "exemplar_mask is empty (no value >= 0.5) but exemplar_mask_marks is 'object': "
                "LoadImage's MASK marks a transparent PNG's background (choose 'background'), "
                "and is empty for an image without transparency (disconnect it)"
            )
        if any(mask_looks_inverted(m) for m in exemplar_mask):
            log.warning(
                "Paint-by-Example Exemplar Encode: exemplar_mask covers the whole border but not "
                "the centre, as a background mask does; if it comes from LoadImage (1 = "
                "transparent), set exemplar_mask_marks to 'background'"
            )
        return exemplar_mask
    if not bool((exemplar_mask >= 0.5).any()):
        log.info(
            "Paint-by-Example Exemplar Encode: exemplar_mask marks no background (an image "
            "without transparency): the whole exemplar is used"
        )
        return None
    return 1.0 - exemplar_mask


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
    expand: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """images [B, H, W, 3|4] 0..1 (a 4th channel: alpha, the mask when none is given) ->
    embeddings [B, 1, D] (float32, intermediate device) and the exemplars as the encoder saw
    them, [B, 3, S, S] 0..1 (``frame_exemplar``)."""
    if not handle.has_tower:
        raise PaintByExampleInputError(NO_TOWER_MESSAGE)
    try:
        view = frame_exemplar(images, handle.config, exemplar_mask, mode, fill, expand)
    except ExemplarError as err:
        raise PaintByExampleInputError(str(err)) from err
    pixels = normalize(view, handle.config.mean, handle.config.std)
    mm.load_model_gpu(handle.patcher)
    device = handle.patcher.load_device
    with torch.inference_mode():
        embeds = handle.encoder(pixels.to(device=device, dtype=handle.dtype))
        check_model_output(embeds, "exemplar encoder", handle.source, handle.encoder)
    return embeds.float().to(mm.intermediate_device()), view


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
                "image. An optional exemplar mask (or the alpha of a cut-out) frames the object "
                "and fills its background; exemplar_view shows what the encoder saw."
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
                        "How the exemplar (the object's box, with an exemplar mask) is fitted to "
                        "the encoder's square input: squash (as the official model was trained), "
                        "centre crop (diffusers' behaviour), or pad_to_square (padded with "
                        "background_fill, the object keeps its aspect; Insert Anything's framing)."
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
                    tooltip="Optional mask of the exemplar, its size: frames the object's box "
                    "and fills the rest with background_fill. For a cut-out (transparent PNG), "
                    "connect LoadImage's MASK here and set exemplar_mask_marks to 'background'. "
                    "Without a mask, a 4-channel IMAGE's alpha is used; a connected mask wins.",
                ),
                io.Float.Input(
                    "object_expand",
                    default=1.0,
                    min=1.0,
                    max=EXEMPLAR_EXPAND_MAX,
                    step=0.05,
                    optional=True,
                    tooltip="The object's box (the whole exemplar without a mask) grows this "
                    "many times around its centre before framing, for context around the "
                    "object; beyond the image is background_fill. 1 = the tight box.",
                ),
                io.Combo.Input(
                    "exemplar_mask_marks",
                    options=MaskMarks,
                    default=MaskMarks.OBJECT,
                    optional=True,
                    tooltip="What exemplar_mask's white (1) marks: the object, or the background "
                    "(LoadImage's MASK of a transparent PNG is 1 where transparent: choose "
                    "'background').",
                ),
            ],
            outputs=[
                *conditioning_outputs(),
                io.Image.Output(
                    display_name="exemplar_view",
                    tooltip="The exemplar(s) as the encoder sees them after framing, "
                    "[B, S, S, 3] (S = 224 for the published model): check the framing here.",
                ),
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
        object_expand: float = 1.0,
        exemplar_mask_marks: str = MaskMarks.OBJECT.value,
    ) -> io.NodeOutput:
        check_widgets(cls, locals())
        check_encoder(encoder)
        rgb = check_image(exemplar, "exemplar")
        images = exemplar if exemplar.shape[-1] == 4 else rgb  # alpha: the mask when none given
        if exemplar_mask is not None:
            exemplar_mask = check_mask(exemplar_mask, "exemplar_mask")
            exemplar_mask = object_mask_of(exemplar_mask, MaskMarks(exemplar_mask_marks))
        embeds, view = encode_exemplars(
            encoder, images, exemplar_mask, resize, background_fill, object_expand
        )
        positive, negative = conditioning_pair(encoder, embeds, combine)
        view = view.permute(0, 2, 3, 1).contiguous().cpu()  # [B, S, S, 3], ComfyUI's layout
        # ComfyUI's samplers ignore extras keys they do not know; the Inpaint Sampler's preview
        # reads this one (nodes/types.py).
        return io.NodeOutput([[positive, {EXEMPLAR_VIEW_KEY: view}]], [[negative, {}]], view)
