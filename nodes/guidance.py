"""Similarity guidance node: patches a Paint-by-Example MODEL's classifier-free guidance.

Works with this pack's sampler and with the stock KSampler / SamplerCustom: the patched MODEL
carries a cfg function (its similarity s replaces the sampler's cfg) and a cond-batch function that
skips the unconditional UNet pass where guidance is off (outside the sigma interval).
"""

from __future__ import annotations

from enum import Enum

import comfy.samplers
import torch
from comfy_api.latest import io

from ..exemplar_core import node_ids
from ..exemplar_core.guidance import (
    DEFAULT_SIMILARITY,
    GuidanceError,
    GuidanceSettings,
    step_index,
)
from .checks import PaintByExampleInputError, check_widgets
from .model_builder import is_pbe_model
from .types import CATEGORY, similarity_input

SIGMA_CEILING = 1000.0  # above any SD1 sigma (sigma_max is about 14.6): "no upper bound"
GUIDANCE_KEY = "paint_by_example_guidance"  # model_options entry naming the active settings


class Schedule(str, Enum):
    CONSTANT = "constant"
    LINEAR = "linear"


def _sigma(args: dict) -> torch.Tensor:
    return args["sigma"].reshape(-1, 1, 1, 1).to(args["input"].dtype)


def _step(args: dict, sigma: float) -> tuple[int, int]:
    sigmas = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
    if sigmas is None or sigmas.numel() < 2:
        return 0, 1
    return step_index(sigma, sigmas), int(sigmas.numel()) - 1


def patch_model(model, settings: GuidanceSettings):
    """A clone of ``model`` whose guidance follows ``settings`` (any sampler, any cfg)."""
    patched = model.clone()
    previous_batch_fn = patched.model_options.get("sampler_calc_cond_batch_function")

    def calc_cond_batch(args: dict) -> list:
        conds = args["conds"]
        sigma = float(args["sigma"].flatten()[0])
        skip_uncond = not settings.guides_at(sigma) or conds[1] is None
        if skip_uncond:
            args = {**args, "conds": [conds[0], None]}
        if previous_batch_fn is not None:
            out = previous_batch_fn(args)
        else:
            out = comfy.samplers.calc_cond_batch(
                args["model"], args["conds"], args["input"], args["sigma"], args["model_options"]
            )
        return [out[0], out[0]] if skip_uncond else out

    def cfg_function(args: dict) -> torch.Tensor:
        # ComfyUI's name for the guidance scale is cfg (args["cond_scale"]); the settings'
        # similarity replaces it here, the one place the two names meet.
        x = args["input"]
        sig = _sigma(args)
        sigma = float(sig.flatten()[0])
        if sigma <= 0 or args.get("uncond_denoised") is None:
            return args["cond"]
        step, total = _step(args, sigma)
        eps_cond = args["cond"] / sig  # ComfyUI passes x - denoised = sigma * eps
        eps_uncond = args["uncond"] / sig
        eps = settings.apply(eps_uncond, eps_cond, x, sigma, step, total)
        return eps * sig

    patched.set_model_sampler_cfg_function(cfg_function, disable_cfg1_optimization=True)
    patched.set_model_sampler_calc_cond_batch_function(calc_cond_batch)
    patched.model_options[GUIDANCE_KEY] = settings
    return patched


class SimilarityGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.SIMILARITY_GUIDANCE,
            display_name="Paint-by-Example Similarity Guidance",
            category=CATEGORY,
            description=(
                "Paint-by-Example's guidance eps = eps(v) + s (eps(c) - eps(v)) with extras: a "
                "linear schedule of s over the steps, a sigma interval outside which the "
                "condition alone is used (and the unconditional pass is skipped), and a rescale "
                "against over-saturation. The similarity s replaces the sampler's cfg/similarity."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A Paint-by-Example MODEL from the Loader."),
                similarity_input(
                    "similarity",
                    "Similarity scale s (the paper's default is 5): higher follows the "
                    "exemplar more closely. Overrides the sampler's cfg.",
                ),
                io.Combo.Input(
                    "schedule",
                    options=Schedule,
                    default=Schedule.CONSTANT,
                    tooltip="constant: s at every step; linear: from 'similarity' at the first "
                    "step to 'similarity_end' at the last.",
                ),
                similarity_input(
                    "similarity_end",
                    "Scale at the last step when the schedule is linear (ignored when constant).",
                ),
                io.Float.Input(
                    "sigma_low",
                    default=0.0,
                    min=0.0,
                    max=SIGMA_CEILING,
                    step=0.01,
                    tooltip="Guidance only for sigmas >= this; below it the condition alone is "
                    "used (0 = no lower bound).",
                ),
                io.Float.Input(
                    "sigma_high",
                    default=SIGMA_CEILING,
                    min=0.0,
                    max=SIGMA_CEILING,
                    step=0.01,
                    tooltip="Guidance only for sigmas <= this; above it the condition alone is "
                    "used (SD1's largest sigma is about 14.6, so 1000 = no upper bound).",
                ),
                io.Float.Input(
                    "rescale_phi",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="RescaleCFG mix against over-saturation at high similarity "
                    "(0 = off, 0.7 is typical).",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL",
                    tooltip="The patched model; use it with this pack's sampler, KSampler or "
                    "SamplerCustom.",
                )
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        similarity: float = DEFAULT_SIMILARITY,
        schedule: str = Schedule.CONSTANT.value,
        similarity_end: float = DEFAULT_SIMILARITY,
        sigma_low: float = 0.0,
        sigma_high: float = SIGMA_CEILING,
        rescale_phi: float = 0.0,
    ) -> io.NodeOutput:
        check_widgets(cls, locals())
        try:  # the settings' own checks name these widgets (sigma_low > sigma_high, ...)
            settings = GuidanceSettings(
                similarity=similarity,
                similarity_end=similarity_end if schedule == Schedule.LINEAR.value else None,
                sigma_low=sigma_low,
                sigma_high=sigma_high,
                rescale_phi=rescale_phi,
            )
        except GuidanceError as err:
            raise PaintByExampleInputError(str(err)) from err
        if not is_pbe_model(model):
            raise PaintByExampleInputError(
                "Similarity Guidance needs a Paint-by-Example MODEL from the Paint-by-Example "
                f"Loader; the connected {type(model).__name__} is another kind of model "
                "(use the stock CFG nodes for it)"
            )
        return io.NodeOutput(patch_model(model, settings))
