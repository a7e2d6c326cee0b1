"""Compile Model node: a MODEL patch that runs the UNet compiled (``exemplar_core.compile``).

Follows ComfyUI's own TorchCompileModel (``comfy_api.torch_helpers.set_torch_compile_wrapper``):
an APPLY_MODEL wrapper swaps the BaseModel's ``diffusion_model`` for the compiled one during each
UNet call only, so the ModelPatcher keeps owning, loading and offloading the real module, clones
share the compiled code, and everything between the calls (the sampler's steps, its live preview,
the interrupt check, Similarity Guidance's cfg and cond-batch functions) runs as before. Unlike
the stock node, a mode this machine cannot run, or a compile that fails, logs one warning and
samples eager instead of failing the prompt.
"""

from __future__ import annotations

import comfy.utils
import torch
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..exemplar_core import node_ids
from ..exemplar_core.compile import COMPILE_MODES, CompiledCall
from .checks import PaintByExampleInputError, check_widgets
from .model_builder import is_pbe_model
from .types import CATEGORY

COMPILE_KEY = "paint_by_example_compile"  # the wrapper's key, and the model_options entry
UNET_KEY = "diffusion_model"


class CompiledUNet(torch.nn.Module):
    """Stands in for a BaseModel's ``diffusion_model`` during a call: calls go through the
    compiled step, attribute reads (``dtype``, ...) reach the real module, which stays owned by
    the ModelPatcher (it is not registered here)."""

    def __init__(self, unet: torch.nn.Module, mode: str) -> None:
        super().__init__()
        object.__setattr__(self, "unet", unet)
        object.__setattr__(self, "step", CompiledCall(unet, mode, what="the UNet"))

    def forward(self, *args, **kwargs):
        return self.step(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "unet"), name)


def patch_model(model, mode: str):
    """A clone of ``model`` whose UNet runs compiled in ``mode`` (``"off"``: without any earlier
    compile patch of this pack)."""
    patched = model.clone()
    patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY)
    patched.model_options.pop(COMPILE_KEY, None)
    if mode == "off":
        return patched
    compiled = CompiledUNet(patched.get_model_object(UNET_KEY), mode)

    def apply_compiled(executor, *args, **kwargs):
        original = comfy.utils.set_attr(executor.class_obj, UNET_KEY, compiled)
        try:
            return executor(*args, **kwargs)
        finally:
            comfy.utils.set_attr(executor.class_obj, UNET_KEY, original)

    patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY, apply_compiled)
    patched.model_options[COMPILE_KEY] = mode
    return patched


class CompileModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.COMPILE_MODEL,
            display_name="Paint-by-Example Compile Model",
            category=CATEGORY,
            description=(
                "Runs the model's UNet compiled with torch.compile (inductor), and with CUDA "
                "graphs on a GPU. The first step at each resolution and batch compiles (seconds "
                "to minutes); later steps and prompts at that size are faster. Where compiling "
                "is impossible, a warning in the console says why and sampling runs uncompiled."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="A Paint-by-Example MODEL from the Loader (before or after "
                    "Similarity Guidance or a LoRA Loader).",
                ),
                io.Combo.Input(
                    "mode",
                    options=list(COMPILE_MODES),
                    default="compile",
                    tooltip="compile: torch.compile with inductor; cudagraphs: the same plus "
                    "CUDA graphs, which remove most of the per-step launch time on a GPU (CUDA "
                    "only); off: the model as it was, uncompiled.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL",
                    tooltip="The model with its UNet compiled; use it with this pack's sampler "
                    "or any other.",
                )
            ],
        )

    @classmethod
    def execute(cls, model, mode: str = "compile") -> io.NodeOutput:
        check_widgets(cls, locals())
        if not is_pbe_model(model):
            raise PaintByExampleInputError(
                "Compile Model needs a Paint-by-Example MODEL from the Paint-by-Example Loader; "
                f"the connected {type(model).__name__} is another kind of model (use the stock "
                "TorchCompileModel node for it)"
            )
        return io.NodeOutput(patch_model(model, mode))
