"""Exemplar Mapper node: a stock CLIP_VISION_OUTPUT -> positive and negative CONDITIONING.

Paint-by-Example's CLIP tower is OpenAI's ViT-L/14, frozen in training, so ComfyUI's own
CLIPVisionLoader + CLIPVisionEncode (crop "none" = the paper's squash) can stand in for it: the
class token of ``last_hidden_state`` (before CLIP's final LayerNorm) goes through the checkpoint's
own ``ln_post``, mapper, final LayerNorm and projection, exactly as in Exemplar Encode.
"""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..exemplar_core import node_ids
from ..exemplar_core.config import EncoderConfig
from .checks import PaintByExampleInputError, check_model_output, check_widgets
from .encode import (
    Combine,
    check_encoder,
    combine_input,
    conditioning_outputs,
    conditioning_pair,
)
from .types import CATEGORY, ExemplarEncoderHandle, PbEEncoder

# Vision towers a CLIP_VISION_OUTPUT often comes from, by token width, for messages.
KNOWN_WIDTHS = {
    768: "ViT-B",
    1024: "ViT-L/14",
    1152: "SigLIP",
    1280: "ViT-H/14",
    1536: "DINOv2 giant",
    1664: "ViT-bigG/14",
}
PUBLISHED = EncoderConfig()


def tower_name(config: EncoderConfig) -> str:
    """The CLIP vision model an encoder's tower is, for messages."""
    if (config.width, config.image_size, config.patch_size) == (
        PUBLISHED.width,
        PUBLISHED.image_size,
        PUBLISHED.patch_size,
    ):
        return f"OpenAI CLIP ViT-L/14 ({config.width}-d, {config.image_size} px)"
    return f"the CLIP vision model of its tower ({config.backbone}: {config.width}-d, " + (
        f"{config.image_size} px)"
    )


def token_count(config: EncoderConfig) -> int:
    """Tokens of the tower's last hidden state: one per patch plus the class token."""
    return (config.image_size // config.patch_size) ** 2 + 1


def class_token(clip_vision_output: object, config: EncoderConfig) -> torch.Tensor:
    """A CLIP_VISION_OUTPUT -> the class token of its ``last_hidden_state``: [B, width] float,
    checked against the encoder's tower (width, token count, finite values)."""
    hidden = getattr(clip_vision_output, "last_hidden_state", None)
    if not isinstance(hidden, torch.Tensor):
        raise PaintByExampleInputError(
            f"'clip_vision_output' must be the CLIP_VISION_OUTPUT of the stock CLIPVisionEncode "
            f"node, got {type(clip_vision_output).__name__}"
        )
    expected = tower_name(config)
    if hidden.ndim != 3 or hidden.shape[0] < 1:
        raise PaintByExampleInputError(
            f"clip_vision_output's last_hidden_state is {list(hidden.shape)}, expected "
            f"[B, tokens, {config.width}]: connect CLIPVisionEncode with {expected}"
        )
    batch, tokens, width = hidden.shape
    if width != config.width:
        known = KNOWN_WIDTHS.get(width)
        found = f"{width}-d tokens" + (f" (e.g. {known})" if known else "")
        raise PaintByExampleInputError(
            f"clip_vision_output is from a model of another width ({found}): Paint-by-Example "
            f"needs {expected}; load that file in CLIPVisionLoader"
        )
    if tokens != token_count(config):
        raise PaintByExampleInputError(
            f"clip_vision_output has {tokens} tokens, expected {token_count(config)}: it comes "
            f"from a model of another input size (e.g. ViT-L/14-336 gives 577); Paint-by-Example "
            f"needs {expected}"
        )
    token = hidden[:, 0].float()
    if not torch.isfinite(token).all():
        raise PaintByExampleInputError(
            "clip_vision_output has NaN or infinite values: the CLIP Vision model's output is "
            "broken; check its file and the image given to CLIPVisionEncode"
        )
    return token


def map_class_token(handle: ExemplarEncoderHandle, token: torch.Tensor) -> torch.Tensor:
    """token [B, width] -> embeddings [B, 1, D] (float32, intermediate device), through the
    encoder loaded by ComfyUI's memory manager (so a LoRA's patches apply)."""
    mm.load_model_gpu(handle.patcher)
    with torch.inference_mode():
        embeds = handle.encoder.project_class_token(token.to(handle.patcher.load_device))
        check_model_output(embeds, "exemplar mapper", handle.source, handle.encoder)
    return embeds.float().to(mm.intermediate_device())


class ExemplarMapper(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.EXEMPLAR_MAPPER,
            display_name="Paint-by-Example Exemplar Mapper",
            category=CATEGORY,
            description=(
                "Paint-by-Example's condition from the stock CLIP Vision path: CLIPVisionLoader "
                "with OpenAI CLIP ViT-L/14 + CLIPVisionEncode (crop 'none' = the paper's squash) "
                "give the CLIP_VISION_OUTPUT, this node applies the checkpoint's mapper. Same "
                "outputs as Exemplar Encode (cosine 0.9999+ to it on the same image: ComfyUI "
                "rounds the resized exemplar to 8 bits); works with the Loader's clip_tower skip."
            ),
            inputs=[
                PbEEncoder.Input(
                    "encoder",
                    tooltip="The exemplar encoder from the Paint-by-Example Loader (clip_tower "
                    "'load' or 'skip'; a LoRA Loader's output works too).",
                ),
                io.ClipVisionOutput.Input(
                    "clip_vision_output",
                    tooltip="From the stock CLIPVisionEncode with OpenAI CLIP ViT-L/14 (e.g. "
                    "clip-vit-large-patch14.safetensors in models/clip_vision), crop 'none' "
                    "(the paper's squash; 'center' crops wide exemplars).",
                ),
                combine_input(),
            ],
            outputs=conditioning_outputs(),
        )

    @classmethod
    def execute(
        cls,
        encoder: ExemplarEncoderHandle,
        clip_vision_output: object,
        combine: str = Combine.SEPARATE.value,
    ) -> io.NodeOutput:
        check_widgets(cls, {"combine": combine})
        check_encoder(encoder)
        embeds = map_class_token(encoder, class_token(clip_vision_output, encoder.config))
        positive, negative = conditioning_pair(encoder, embeds, combine)
        return io.NodeOutput([[positive, {}]], [[negative, {}]])
