"""Exemplar inpaint sampler node: crop around the mask, sample natively, decode, stitch back.

Per image: plan a context window around the mask (``exemplar_core.crop``), resize it to the
processing resolution, grey out the edit area and VAE-encode it (the masked-image latent), sample
with ComfyUI's own sampler (progress bar, live preview, interrupt, memory management), decode,
optionally colour-match (``exemplar_core.color``) and blend the window back so everything outside
the mask's feather band is the source, pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import node_helpers
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..exemplar_core import crop, node_ids
from ..exemplar_core.checks import SEED_MAX
from ..exemplar_core.guidance import DEFAULT_SIMILARITY
from .checks import (
    PaintByExampleInputError,
    check_batch,
    check_image,
    check_model_output,
    check_widgets,
)
from .crop_stitch import (
    color_match_input,
    context_margin_input,
    crop_one,
    edit_masks,
    feather_input,
    mask_blur_input,
    mask_grow_input,
    resolution_input,
    stitch_one,
    to_bchw,
    to_bhwc,
    window_size,
)
from .model_builder import is_pbe_model, model_source, vae_source
from .preview import sampler_previews
from .types import CATEGORY, seed_input, similarity_input


def _condition_batch(conditioning: object, what: str, context_dim: int | None) -> int:
    """Validate a CONDITIONING list; return its batch size (N or 1 is checked by the caller)."""
    if not isinstance(conditioning, list) or not conditioning:
        raise PaintByExampleInputError(
            f"{what} must be a CONDITIONING from Paint-by-Example Exemplar Encode"
        )
    batches = set()
    for item in conditioning:
        tensor = item[0] if isinstance(item, (list, tuple)) and item else None
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
            raise PaintByExampleInputError(
                f"{what} is not a CONDITIONING [B, tokens, D]: connect Exemplar Encode"
            )
        if context_dim is not None and tensor.shape[-1] != context_dim:
            raise PaintByExampleInputError(
                f"{what} has {tensor.shape[-1]}-d tokens but the model expects {context_dim}-d: "
                f"encode the exemplar with the encoder of the same checkpoint (a text prompt "
                f"or another model's condition does not fit)"
            )
        if not torch.isfinite(tensor).all():
            raise PaintByExampleInputError(f"{what} has NaN or infinite values")
        batches.add(tensor.shape[0])
    if len(batches) != 1:
        raise PaintByExampleInputError(f"{what} mixes batch sizes {sorted(batches)}")
    return batches.pop()


def _select(conditioning: list, index: int, batch: int) -> list:
    """Item ``index`` of a batched CONDITIONING (the only item when its batch is 1)."""
    if batch == 1:
        return conditioning
    return [[t[0][index : index + 1], dict(t[1])] for t in conditioning]


def _context_dim(model) -> int | None:
    return model.model.model_config.unet_config.get("context_dim")


class ExemplarInpaintSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.INPAINT_SAMPLER,
            display_name="Paint-by-Example Inpaint Sampler",
            category=CATEGORY,
            description=(
                "Paints the exemplar into the masked area. Crops a window around the mask with "
                "context, works at the processing resolution with ComfyUI's samplers, and "
                "stitches the result back: outside the mask's feather band the output is the "
                "source, pixel for pixel. N images take N or 1 masks and N or 1 conditions."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="Paint-by-Example MODEL from the Loader "
                    "(optionally through Similarity Guidance).",
                ),
                io.Vae.Input("vae", tooltip="The VAE from the same Paint-by-Example Loader."),
                io.Conditioning.Input(
                    "positive", tooltip="Exemplar condition from Exemplar Encode (positive)."
                ),
                io.Conditioning.Input(
                    "negative",
                    tooltip="Learned unconditional vector from Exemplar Encode (negative).",
                ),
                io.Image.Input("image", tooltip="Source image(s) to edit, any size."),
                io.Mask.Input(
                    "mask",
                    tooltip="Edit mask, 1 (white) = repaint; the image's size. LoadImage "
                    "turns transparent pixels into the mask.",
                ),
                seed_input("Noise seed; image i of a batch uses seed + i."),
                io.Int.Input(
                    "steps",
                    default=50,
                    min=1,
                    max=10000,
                    tooltip="Sampling steps (the paper used 50 PLMS steps).",
                ),
                similarity_input(
                    "similarity",
                    "Guidance scale s: higher follows the exemplar more closely (paper: "
                    "5). A Similarity Guidance patch on the model takes precedence.",
                    round=0.01,
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.KSampler.SAMPLERS,
                    default="ddim",
                    tooltip="ComfyUI sampler (ddim with ddim_uniform matches the official "
                    "DDIM timesteps).",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.KSampler.SCHEDULERS,
                    default="ddim_uniform",
                    tooltip="ComfyUI noise schedule.",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip="1 = paint from pure noise (Paint-by-Example's setting); lower keeps "
                    "more of the source under the mask.",
                ),
                context_margin_input(),
                resolution_input(
                    "Longer side of the processed window. 0 = the model's own training "
                    "resolution (512 for the published model, 64 for the embedded mini model); a "
                    "multiple of the model's size multiple (64 for the published model)."
                ),
                feather_input(),
                color_match_input(),
                mask_grow_input(optional=True),
                mask_blur_input(optional=True),
            ],
            outputs=[
                io.Image.Output(
                    display_name="IMAGE",
                    tooltip="The edited image(s) at the source's full resolution.",
                ),
                io.Latent.Output(
                    display_name="LATENT",
                    tooltip="The sampled window latent(s) at processing size (resized to a "
                    "common size when the windows differ).",
                ),
                io.Image.Output(
                    display_name="preview",
                    tooltip="Per image: the processing window with the edit mask outlined "
                    "(magenta on its edge, black just outside) and, framed in cyan, the exemplar "
                    "exactly as the encoder saw it (enlarged by whole pixels). Padded to one size.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        vae,
        positive,
        negative,
        image: torch.Tensor,
        mask: torch.Tensor,
        seed: int = 0,
        steps: int = 50,
        similarity: float = DEFAULT_SIMILARITY,
        sampler_name: str = "ddim",
        scheduler: str = "ddim_uniform",
        denoise: float = 1.0,
        context_margin: float = 0.25,
        resolution: int = 0,
        feather: int = 16,
        color_match: bool = False,
        mask_grow: int = 0,
        mask_blur: int = 0,
    ) -> io.NodeOutput:
        check_widgets(cls, locals())
        if not is_pbe_model(model):
            raise PaintByExampleInputError(
                "the MODEL is not a Paint-by-Example model: connect the MODEL output of the "
                "Paint-by-Example Loader (an SD inpainting checkpoint has a different input "
                "layout and conditioning)"
            )
        if not hasattr(vae, "encode") or not hasattr(vae, "decode"):
            raise PaintByExampleInputError("'vae' must be a VAE (the Loader's VAE output)")
        images = check_image(image, "image").float()
        count = images.shape[0]
        edits = edit_masks(images, mask, mask_grow, mask_blur)
        context_dim = _context_dim(model)
        pos_batch = _condition_batch(positive, "positive", context_dim)
        neg_batch = _condition_batch(negative, "negative", context_dim)
        check_batch(pos_batch, count, "positive conditions")
        check_batch(neg_batch, count, "negative conditions")
        resolution, multiple = window_size(model, vae, resolution)

        settings = _Settings(
            steps=steps,
            similarity=similarity,
            sampler_name=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
            context_margin=context_margin,
            resolution=resolution,
            feather=feather,
            color_match=color_match,
            size_multiple=multiple,
        )
        outputs, latents, windows = [], [], []
        for index in range(count):
            edit = edits[min(index, edits.shape[0] - 1)]
            result, latent, window = _edit_one(
                model,
                vae,
                _select(positive, index, pos_batch),
                _select(negative, index, neg_batch),
                images[index : index + 1],
                edit,
                seed=(seed + index) % (SEED_MAX + 1),  # seed + i wraps around in the seed range
                settings=settings,
            )
            outputs.append(result)
            latents.append(latent)
            windows.append(window)
        preview = sampler_previews(windows, positive, pos_batch)
        return io.NodeOutput(torch.cat(outputs), {"samples": _stack(latents)}, preview)


def _sampler_seed(seed: int, sampler_name: str) -> int:
    """The seed handed to ComfyUI's sampler. Its ddim seeds the inpaint noise with seed + 1, past
    torch's range at the top of the seed widget's; torch draws the same numbers for s and
    s - 2**64, so ddim gets that form (other samplers keep s: torchsde refuses negative seeds)."""
    if sampler_name == "ddim" and seed > SEED_MAX // 2:
        return seed - (SEED_MAX + 1)
    return seed


def _vae_module(vae) -> torch.nn.Module | None:
    module = getattr(vae, "first_stage_model", None)
    return module if isinstance(module, torch.nn.Module) else None


def _stack(latents: list[torch.Tensor]) -> torch.Tensor:
    size = max(latents, key=lambda t: t.shape[-1] * t.shape[-2]).shape[-2:]
    same = [
        t if t.shape[-2:] == size else F.interpolate(t, size=size, mode="bilinear") for t in latents
    ]
    return torch.cat(same)


@dataclass(frozen=True)
class _Settings:
    """The sampler node's widgets that every image of a batch shares."""

    steps: int
    similarity: float  # ComfyUI's cfg
    sampler_name: str
    scheduler: str
    denoise: float
    context_margin: float
    resolution: int  # the processing resolution, already resolved (never 0)
    feather: int
    color_match: bool
    size_multiple: int


def _edit_one(
    model,
    vae,
    positive,
    negative,
    source: torch.Tensor,
    edit_mask: torch.Tensor,
    *,
    seed: int,
    settings: _Settings,
) -> tuple[torch.Tensor, torch.Tensor, crop.Window]:
    """source [1, H, W, 3], edit_mask [H, W] binary -> ([1, H, W, 3] edited, raw latent, the
    processing window, for the preview)."""
    s = settings
    item = crop_one(
        to_bchw(source), edit_mask, s.context_margin, s.resolution, s.feather, s.size_multiple
    )
    window = item.window
    masked_latent = vae.encode(to_bhwc(window.masked_image))  # VAE.encode takes 0..1 pixels
    if s.denoise < 1.0:
        start = vae.encode(to_bhwc(window.image))
    else:  # Paint-by-Example starts from pure noise: nothing of the source leaks in
        start = torch.zeros_like(masked_latent)
    # The edit mask: "mask_inverted" makes ComfyUI invert it (exemplar_core/masks.py explains).
    extra = {"concat_latent_image": masked_latent, "concat_mask": window.edit_mask}
    positive = node_helpers.conditioning_set_values(positive, extra)
    negative = node_helpers.conditioning_set_values(negative, extra)

    check_model_output(masked_latent, "VAE encoder", vae_source(vae), _vae_module(vae))
    start = comfy.sample.fix_empty_latent_channels(model, start)
    noise = comfy.sample.prepare_noise(start, seed)
    callback = latent_preview.prepare_callback(model, s.steps)
    samples = comfy.sample.sample(
        model,
        noise,
        s.steps,
        s.similarity,  # ComfyUI's cfg argument
        s.sampler_name,
        s.scheduler,
        positive,
        negative,
        start,
        denoise=s.denoise,
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=_sampler_seed(seed, s.sampler_name),
    )
    mm.throw_exception_if_processing_interrupted()
    check_model_output(samples, "UNet", model_source(model), model.model.diffusion_model)
    decoded = vae.decode(samples)[..., :3].float()
    check_model_output(decoded, "VAE decoder", vae_source(vae), _vae_module(vae))
    raw = to_bchw(decoded).cpu().clamp(0, 1)
    stitched = stitch_one(item, raw, s.feather, s.color_match)
    return to_bhwc(stitched), samples.cpu(), window
