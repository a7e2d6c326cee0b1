"""Build ComfyUI-native objects from a Paint-by-Example checkpoint.

- MODEL: ComfyUI's own ``BaseModel`` + LDM ``UNetModel`` from an explicit model config (the
  architecture comes from the checkpoint's config, not from ComfyUI's auto-detection, so any UNet
  size loads), with the concat layout patched to Paint-by-Example's ``[masked latent, keep mask]``;
- VAE: ``comfy.sd.VAE`` built from an explicit ``AutoencoderKL`` config;
- the exemplar encoder wrapped in a ``ModelPatcher`` so ComfyUI's memory manager owns it.
"""

from __future__ import annotations

import functools
import logging

import comfy.latent_formats
import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.utils
import torch

from ..exemplar_core import model as core_model
from ..exemplar_core.checkpoint.arch import ldm_unet_kwargs, ldm_vae_ddconfig
from ..exemplar_core.encoder import ExemplarEncoder, towerless_state_dict
from .checks import check_model_output
from .types import EncoderContainer, ExemplarEncoderHandle

log = logging.getLogger(__name__)

# ComfyUI's concat keys for Paint-by-Example's UNet input [x, masked-image latent, keep mask]:
# "mask_inverted" makes ComfyUI turn the sampler's edit mask into the keep mask the UNet wants
# (the two mask conventions: exemplar_core/masks.py).
PBE_CONCAT_KEYS = ("masked_image", "mask_inverted")
NATIVE_SIZE_KEY = "paint_by_example_native_size"
SOURCE_KEY = "paint_by_example_source"  # the checkpoint file, for messages
MODEL_MARKER = "paint_by_example"  # model_options key set on every MODEL this pack builds


class PbEModelConfig(comfy.supported_models.SD15):
    """SD1-family model config whose UNet arguments come from the checkpoint, not from presets."""

    unet_extra_config: dict = {}  # the heads are in the given config; SD15 would force 8 heads

    def __init__(self, unet_kwargs: dict, latent_scale: float) -> None:
        super().__init__(unet_kwargs)
        self.latent_format = comfy.latent_formats.SD15(scale_factor=latent_scale)


class CheckpointLoadError(ValueError):
    """A checkpoint part that does not fit the architecture its config describes."""


def _check_keys(what: str, expected: set[str], given: set[str], source: str) -> None:
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        raise CheckpointLoadError(
            f"{what} weights in {source} do not match their config: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}); the file may be damaged or from another model family"
        )


def comfy_model(ckpt, dtype: torch.dtype | None = None) -> comfy.model_patcher.ModelPatcher:
    """PbECheckpoint -> native MODEL (ModelPatcher) with Paint-by-Example's concat layout."""
    sd = ckpt.unet
    unet_kwargs = ldm_unet_kwargs(ckpt.configs.unet)
    model_config = PbEModelConfig(unet_kwargs, ckpt.configs.latent_scale)
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    supported = list(model_config.supported_inference_dtypes)
    if dtype is None:
        dtype = mm.unet_dtype(
            model_params=comfy.utils.calculate_parameters(sd),
            supported_dtypes=supported,
            weight_dtype=comfy.utils.weight_dtype(sd),
        )
    manual_cast = mm.unet_manual_cast(dtype, load_device, supported)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model({}, "")
    _check_keys("UNet", set(model.diffusion_model.state_dict().keys()), set(sd.keys()), ckpt.source)
    model = model.to(offload_device)
    model.load_model_weights(dict(sd), "")
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=load_device, offload_device=offload_device
    )
    patcher.add_object_patch("concat_keys", PBE_CONCAT_KEYS)
    for name, module in model.diffusion_model.named_modules():
        if name.endswith("attn2") and isinstance(module, comfy_attention.CrossAttention):
            patch = functools.partial(single_token_cross_attention, module)
            patcher.add_object_patch(f"diffusion_model.{name}.forward", patch)
    if cpu_attention_applies(load_device):
        options = patcher.model_options.setdefault("transformer_options", {})
        options["optimized_attention_override"] = sdpa_attention
    patcher.model_options[MODEL_MARKER] = True
    patcher.model_options[NATIVE_SIZE_KEY] = ckpt.configs.native_size
    patcher.model_options[SOURCE_KEY] = ckpt.source
    return patcher


def single_token_cross_attention(
    attn, x, context=None, value=None, mask=None, transformer_options=None
) -> torch.Tensor:
    """``CrossAttention.forward`` for the cross-attention layers of this pack's UNet, whose
    condition is one token ([B, 1, D]): the softmax over a single key is exactly 1, so every
    position's output is ``to_out(to_v(context))``; the query and key projections and the
    attention product are skipped, and the output projection runs on one token (the result
    differs from the full computation only in float rounding). Anything else (several tokens, a
    separate value or a mask from a patch, output patches) runs the layer's own forward."""
    options = transformer_options if transformer_options is not None else {}
    plain = (
        context is not None
        and context.shape[1] == 1
        and value is None
        and mask is None
        and "attn2_output_patch" not in options.get("patches", {})
        and not torch.is_grad_enabled()  # training (a LoRA trainer) needs every projection
    )
    if not plain:
        return type(attn).forward(attn, x, context, value, mask, transformer_options=options)
    return attn.to_out(attn.to_v(context)).expand(-1, x.shape[1], -1)


def cpu_attention_applies(load_device: torch.device) -> bool:
    """Whether this pack's MODEL runs its UNet's attention through PyTorch's SDPA
    (``sdpa_attention``): on a CPU, where ComfyUI falls back to its chunked sub-quadratic
    attention unless told otherwise (a CPU has no memory pressure that chunking relieves, and
    SDPA's fused CPU kernel is faster); an explicit ``--use-quad-cross-attention`` or
    ``--use-split-cross-attention`` is kept."""
    from comfy.cli_args import args

    chosen = comfy_attention.optimized_attention
    return (
        load_device.type == "cpu"
        and chosen is comfy_attention.attention_sub_quad
        and not (args.use_quad_cross_attention or args.use_split_cross_attention)
    )


def sdpa_attention(default, *args, **kwargs):
    """ComfyUI's ``optimized_attention_override``: ComfyUI's own PyTorch attention
    (``attention_pytorch``, SDPA) in place of the ``default`` chosen for the device. The same
    mathematics; the result differs from sub-quadratic attention only in float rounding."""
    return comfy_attention.attention_pytorch(*args, **kwargs)


def model_source(model: comfy.model_patcher.ModelPatcher) -> str:
    """The checkpoint file a MODEL of this pack was built from ("" if unknown)."""
    return str(model.model_options.get(SOURCE_KEY, ""))


def vae_source(vae) -> str:
    """The checkpoint file a VAE of this pack was built from ("" if unknown)."""
    return str(getattr(vae, SOURCE_KEY, ""))


def model_native_size(model: comfy.model_patcher.ModelPatcher) -> int:
    """The training resolution of a MODEL of this pack (``ModelConfigs.native_size``); 512 for
    any other MODEL (ComfyUI's models carry no training size to read)."""
    if not is_pbe_model(model):
        return 512
    return int(model.model_options.get(NATIVE_SIZE_KEY, 512))


def comfy_vae(ckpt, dtype: torch.dtype | None = None) -> comfy.sd.VAE:
    """PbECheckpoint -> native ``comfy.sd.VAE`` of the checkpoint's size."""
    ddconfig = ldm_vae_ddconfig(ckpt.configs.vae)
    embed_dim = ddconfig.pop("embed_dim")
    vae = comfy.sd.VAE(
        sd=dict(ckpt.vae),
        config={"params": {"ddconfig": ddconfig, "embed_dim": embed_dim}},
        dtype=dtype,
    )
    _check_keys(
        "VAE", set(vae.first_stage_model.state_dict().keys()), set(ckpt.vae.keys()), ckpt.source
    )
    factor = ckpt.configs.vae_scale_factor
    setattr(vae, SOURCE_KEY, ckpt.source)
    vae.downscale_ratio = factor
    vae.upscale_ratio = factor
    vae.latent_channels = int(ckpt.configs.vae.get("latent_channels", 4))
    return vae


def comfy_encoder(
    ckpt, dtype: torch.dtype | None = None, tower: bool = True
) -> ExemplarEncoderHandle:
    """PbECheckpoint -> exemplar encoder in a ModelPatcher (loaded to the device on use).

    ``tower=False``: without the CLIP tower (only its final LayerNorm is kept, for the Exemplar
    Mapper); the tower's weights are neither built nor kept (1.2 GB in fp32 at ViT-L size).
    """
    load_device = mm.text_encoder_device()
    offload_device = mm.text_encoder_offload_device()
    if dtype is None:  # a plain torch module (no manual-cast ops): fp32 unless the device does fp16
        if mm.should_use_fp16(load_device):
            dtype = torch.float16
        elif mm.should_use_bf16(load_device):
            dtype = torch.bfloat16
        else:
            dtype = torch.float32
    encoder = ExemplarEncoder(ckpt.configs.encoder, tower=tower)
    state = ckpt.encoder if tower else towerless_state_dict(ckpt.encoder)
    _check_keys("exemplar encoder", set(encoder.state_dict().keys()), set(state), ckpt.source)
    encoder.load_state_dict(state, strict=True)
    # The learned vector (every negative condition) is checked here, once, not at each encode.
    check_model_output(
        encoder.learnable_vector.detach().float(),
        "exemplar encoder's learned vector",
        ckpt.source,
        encoder,
    )
    encoder = encoder.to(device=offload_device, dtype=dtype).eval().requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(
        EncoderContainer(encoder), load_device=load_device, offload_device=offload_device
    )
    return ExemplarEncoderHandle(patcher, ckpt.configs.encoder, dtype, ckpt.source)


def is_pbe_model(model: object) -> bool:
    """Whether a MODEL socket value is a Paint-by-Example model built by this pack."""
    options = getattr(model, "model_options", None)
    return isinstance(options, dict) and bool(options.get(MODEL_MARKER))


def size_multiple(model: comfy.model_patcher.ModelPatcher, vae: comfy.sd.VAE) -> int:
    """Processing sizes must be multiples of this (``exemplar_core.model.size_multiple``) for
    this MODEL's UNet and the connected VAE."""
    mult = model.model.model_config.unet_config.get("channel_mult", (1, 2, 4, 4))
    factor = vae.downscale_ratio if isinstance(vae.downscale_ratio, int) else 8
    return core_model.size_multiple(factor, len(mult))
