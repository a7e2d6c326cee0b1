"""The three parts of a Paint-by-Example model (UNet, VAE, exemplar encoder) as one module.

The UNet and VAE are diffusers modules (``UNet2DConditionModel``, ``AutoencoderKL``) built from
their configs; the canonical weights on disk use the LDM key layout (see ``checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import LATENT_SCALE, ConfigError, EncoderConfig
from .encoder import ExemplarEncoder
from .masks import unet_input

# The published Paint-by-Example UNet (SD 1.x with 9 input channels), as a diffusers config.
SD1_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 9,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

SD1_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": LATENT_SCALE,
}


@dataclass(frozen=True)
class ModelConfigs:
    """Everything needed to build the architecture: diffusers UNet and VAE configs + encoder."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    encoder: EncoderConfig

    @classmethod
    def named(cls, name: str) -> ModelConfigs:
        """The architecture called ``name``: 'published', 'tiny' or 'mini'."""
        makers = {"published": cls.published, "tiny": cls.tiny, "mini": cls.mini}
        if name not in makers:
            raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(makers)}")
        return makers[name]()

    @classmethod
    def published(cls) -> ModelConfigs:
        return cls(dict(SD1_UNET_CONFIG), dict(SD1_VAE_CONFIG), EncoderConfig())

    @classmethod
    def tiny(cls, cross_attention_dim: int = 32) -> ModelConfigs:
        """A ~5 MB model of the same family for tests (GroupNorm(32) needs widths of 32k)."""
        unet = {
            "sample_size": 8,
            "in_channels": 9,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "cross_attention_dim": cross_attention_dim,
            "attention_head_dim": 2,
            "norm_num_groups": 32,
        }
        vae = {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [32, 32, 32, 32],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 64,
            "scaling_factor": LATENT_SCALE,
        }
        encoder = EncoderConfig(
            backbone="tiny-vit",
            image_size=32,
            patch_size=8,
            width=32,
            layers=2,
            heads=2,
            mapper_layers=2,
            out_dim=cross_attention_dim,
        )
        return cls(unet, vae, encoder)

    @classmethod
    def mini(cls) -> ModelConfigs:
        """The miniature world's model (64 px, VAE factor 4): same family and code paths as the
        published one, small enough to train on two CPU cores (see docs/miniature-world.md)."""
        unet = {
            "sample_size": 16,
            "in_channels": 9,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [64, 128],
            "layers_per_block": 1,
            "cross_attention_dim": 64,
            "attention_head_dim": 4,
            "norm_num_groups": 32,
        }
        vae = {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            # 64 channels everywhere: GroupNorm(32) over 32 channels would be instance norm,
            # which erases each image's absolute colour (ComfyUI's VAE always uses 32 groups).
            "block_out_channels": [64, 64, 64],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 64,
            "scaling_factor": 1.0,
        }
        encoder = EncoderConfig(
            backbone="mini-vit",
            image_size=32,
            patch_size=8,
            width=64,
            layers=2,
            heads=2,
            mapper_layers=2,
            out_dim=64,
        )
        return cls(unet, vae, encoder)

    def check(self) -> None:
        """Raise ``ConfigError`` unless the three parts fit together as Paint-by-Example."""
        unet_in = self.unet.get("in_channels")
        latent = self.vae.get("latent_channels", 4)
        if unet_in != 2 * latent + 1:
            raise ConfigError(
                f"the UNet takes {unet_in} input channels; a Paint-by-Example UNet takes "
                f"{2 * latent + 1} (noisy latent, masked-image latent, keep mask)"
            )
        context = self.unet.get("cross_attention_dim")
        if context != self.encoder.out_dim:
            raise ConfigError(
                f"the UNet's cross-attention width {context} differs from the encoder's output "
                f"width {self.encoder.out_dim}"
            )

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (8 for SD1)."""
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def size_multiple(self) -> int:
        """Processing sizes are multiples of this (64 for SD1): see ``size_multiple``."""
        return size_multiple(self.vae_scale_factor, len(self.unet["block_out_channels"]))

    @property
    def native_size(self) -> int:
        """The resolution the model was trained at: UNet sample size x VAE factor (512 for SD1)."""
        return int(self.unet.get("sample_size", 64)) * self.vae_scale_factor

    @property
    def latent_scale(self) -> float:
        return float(self.vae.get("scaling_factor", LATENT_SCALE))


def size_multiple(vae_scale_factor: int, unet_levels: int) -> int:
    """Processing sizes are multiples of this: the VAE factor x 2 per UNet downsampling (the UNet
    halves the latent once between each of its ``unet_levels`` levels)."""
    return vae_scale_factor * 2 ** (unet_levels - 1)


class SingleTokenCrossAttention:
    """A diffusers attention processor for cross-attention to a one-token condition (Paint-by-
    Example's ``[B, 1, D]``): the softmax over a single key is exactly 1, so every query's output
    is that token's value, and the layer's output is ``to_out(to_v(condition))`` at every
    position. The query and key projections and the attention product are skipped (they cannot
    change the result); the output projection runs on one token instead of every position, which
    can differ from the full computation only in float rounding. Anything else (self-attention,
    several tokens, a mask, the norms some attention layers have) goes to ``fallback``."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        plain = (
            encoder_hidden_states is not None
            and encoder_hidden_states.shape[1] == 1
            and attention_mask is None
            and hidden_states.ndim == 3
            and attn.spatial_norm is None
            and attn.group_norm is None
            and not attn.norm_cross
            and not args
            and not kwargs
            and not torch.is_grad_enabled()  # training needs every projection's gradient
        )
        if not plain:
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        value = attn.to_v(encoder_hidden_states)  # [B, 1, inner]
        out = attn.to_out[1](attn.to_out[0](value))  # [B, 1, C]
        if attn.residual_connection:
            return (out + hidden_states) / attn.rescale_output_factor
        # [B, N, C] as a view: the caller adds it to its residual stream
        return (out / attn.rescale_output_factor).expand(-1, hidden_states.shape[1], -1)


def use_single_token_cross_attention(unet: nn.Module) -> None:
    """Give every cross-attention layer (``attn2``) of a diffusers UNet the
    ``SingleTokenCrossAttention`` processor over the one it has (kept as its fallback)."""
    processors = dict(unet.attn_processors)
    for name, processor in processors.items():
        if name.endswith("attn2.processor") and not isinstance(
            processor, SingleTokenCrossAttention
        ):
            processors[name] = SingleTokenCrossAttention(processor)
    unet.set_attn_processor(processors)


def _unet_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel

    # Keep only the keys diffusers knows (saved configs carry private "_..." entries).
    allowed = set(UNet2DConditionModel._get_init_keys(UNet2DConditionModel))
    return {k: v for k, v in config.items() if k in allowed}


def _vae_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    allowed = set(AutoencoderKL._get_init_keys(AutoencoderKL))
    return {k: v for k, v in config.items() if k in allowed}


def build_unet(config: dict[str, Any]) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**_unet_kwargs(config))


def build_vae(config: dict[str, Any]) -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**_vae_kwargs(config))


class PaintByExampleModel(nn.Module):
    """UNet + VAE + exemplar encoder, with the Paint-by-Example conventions in one place."""

    def __init__(self, configs: ModelConfigs) -> None:
        super().__init__()
        self.configs = configs
        configs.check()
        self.unet = build_unet(configs.unet)
        self.vae = build_vae(configs.vae)
        self.encoder = ExemplarEncoder(configs.encoder)

    @property
    def latent_scale(self) -> float:
        return self.configs.latent_scale

    @property
    def vae_scale_factor(self) -> int:
        return self.configs.vae_scale_factor

    def encode_posterior(self, image: torch.Tensor):
        """image: [B, 3, H, W] in -1..1 -> the VAE's latent distribution (unscaled; diffusers'
        ``DiagonalGaussianDistribution``, mean and std [B, C, H/f, W/f])."""
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(image.to(vae_dtype)).latent_dist

    def encode_latent(
        self, image: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """image: [B, 3, H, W] in -1..1 -> scaled latent [B, C, H/f, W/f] (sample or mode)."""
        posterior = self.encode_posterior(image)
        latent = posterior.sample(generator) if sample else posterior.mode()
        return latent * self.latent_scale

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """scaled latent [B, C, h, w] -> image [B, 3, h*f, w*f] in -1..1 (not clamped)."""
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latent.to(vae_dtype) / self.latent_scale).sample

    def predict_noise(
        self,
        noisy_latent: torch.Tensor,
        timestep: torch.Tensor,
        masked_latent: torch.Tensor,
        keep_mask_latent: torch.Tensor,
        condition: torch.Tensor,
    ) -> torch.Tensor:
        """ε for UNet input ``[noisy latent, masked-image latent, keep mask]`` and ``[B, 1, D]``."""
        unet_dtype = next(self.unet.parameters()).dtype
        x = unet_input(noisy_latent, masked_latent, keep_mask_latent).to(unet_dtype)
        return self.unet(x, timestep, encoder_hidden_states=condition.to(unet_dtype)).sample
