"""The exemplar encoder: open_clip vision tower -> class token -> mapper -> LayerNorm -> projection.

State-dict keys (the project's canonical layout, also used in the single-file format under the
``exemplar_encoder.`` prefix):

- ``tower.*``: open_clip ``VisionTransformer`` keys (``conv1.weight``, ``class_embedding``,
  ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N.{ln_1, attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``). CLIP's own
  projection is not used and not stored.
- ``mapper.resblocks.N.{ln_1, attn.c_qkv, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}``: the names of
  the official checkpoint's ``cond_stage_model.mapper``, so those weights load directly.
- ``final_ln.*``, ``proj_out.*``, ``learnable_vector`` ``[1, 1, out_dim]``.

Without its tower (``ExemplarEncoder(config, tower=False)``) the encoder keeps only the tower's
final LayerNorm (``tower.ln_post.*``, same keys) and the trained parts: it projects a class token
computed elsewhere (ComfyUI's CLIP Vision of the same ViT) and never holds the tower's weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderConfig


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (as the official mapper's LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class MapperAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (``c_qkv``) and ``c_proj``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, width * 3)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, W] -> [B, T, W]."""
        batch, tokens, width = x.shape
        head_width = width // self.heads
        # The official xf.py layout: c_qkv's output is per head [q_h, k_h, v_h] (for the
        # published single head simply [q, k, v]).
        qkv = self.c_qkv(x).view(batch, tokens, self.heads, 3 * head_width).transpose(1, 2)
        q, k, v = qkv.split(head_width, dim=-1)  # each [B, heads, T, head_width]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class MapperMLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, width * 4)
        self.c_proj = nn.Linear(width * 4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU, as the official mapper


class MapperBlock(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = LayerNormFp32(width)
        self.attn = MapperAttention(width, heads)
        self.ln_2 = LayerNormFp32(width)
        self.mlp = MapperMLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Mapper(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(MapperBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


def build_tower(config: EncoderConfig) -> nn.Module:
    """An open_clip ViT tower that returns the pooled class token after ``ln_post``: [B, width]."""
    from open_clip.transformer import LayerNorm, QuickGELU, VisionTransformer

    tower = VisionTransformer(
        image_size=config.image_size,
        patch_size=config.patch_size,
        width=config.width,
        layers=config.layers,
        heads=config.heads,
        mlp_ratio=config.mlp_ratio,
        output_dim=config.out_dim,
        pool_type="tok",
        act_layer=QuickGELU if config.quick_gelu else nn.GELU,
        norm_layer=LayerNorm,
    )
    # Paint-by-Example uses the unprojected class token (1024-d for ViT-L), not CLIP's embedding.
    tower.proj = None
    return tower


class TowerMissingError(RuntimeError):
    """The pixel path was called on an encoder built without its CLIP tower."""

    def __init__(self) -> None:
        super().__init__(
            "this exemplar encoder was built without its CLIP tower (tower=False): it projects "
            "class tokens (project_class_token), not pixels; build it with tower=True to encode "
            "exemplar images"
        )


class TowerHead(nn.Module):
    """What a tower-less encoder keeps of the tower: its final LayerNorm ``ln_post`` (so the keys
    stay ``tower.ln_post.*``). It has no pixel path."""

    def __init__(self, width: int) -> None:
        super().__init__()
        from open_clip.transformer import LayerNorm

        self.ln_post = LayerNorm(width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise TowerMissingError()


TOWER_HEAD_PREFIX = "tower.ln_post."


def towerless_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full encoder state dict -> the keys a tower-less encoder has (the tower's weights are
    left out, not copied; ``tower.ln_post.*`` stays)."""
    return {
        key: value
        for key, value in state_dict.items()
        if not key.startswith("tower.") or key.startswith(TOWER_HEAD_PREFIX)
    }


class ExemplarEncoder(nn.Module):
    """Exemplar pixels ``[B, 3, S, S]`` (CLIP-normalised, S = image_size) -> ``[B, 1, out_dim]``.

    ``tower=False`` builds it without the CLIP tower (only ``tower.ln_post`` is kept): it then
    projects class tokens (``project_class_token``) and refuses pixels.
    """

    def __init__(self, config: EncoderConfig | None = None, tower: bool = True) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        width = self.config.width
        self.tower = build_tower(self.config) if tower else TowerHead(width)
        self.mapper = Mapper(width, self.config.mapper_layers, self.config.mapper_heads)
        self.final_ln = LayerNormFp32(width)
        self.proj_out = nn.Linear(width, self.config.out_dim)
        self.learnable_vector = nn.Parameter(torch.randn(1, 1, self.config.out_dim))

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    @property
    def has_tower(self) -> bool:
        """Whether the CLIP tower is here (False: built with ``tower=False``)."""
        return not isinstance(self.tower, TowerHead)

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tower's class token after its final LayerNorm: [B, width]."""
        if not self.has_tower:
            raise TowerMissingError()
        size = self.config.image_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[-2:] != (size, size):
            raise ValueError(
                f"exemplar pixels must be [B, 3, {size}, {size}] (use preprocess_exemplar), "
                f"got {list(pixels.shape)}"
            )
        return self.tower(pixels.to(device=self.device, dtype=self.dtype))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Mapper -> final LN -> projection: [B, width] -> [B, 1, out_dim]."""
        x = self.mapper(pooled[:, None, :])
        return self.proj_out(self.final_ln(x))

    def project_class_token(self, class_token: torch.Tensor) -> torch.Tensor:
        """The tower's class token before its final LayerNorm (a CLIP vision model's
        ``last_hidden_state[:, 0]``), [B, width] -> [B, 1, out_dim]: ln_post, then ``project``.
        Works with and without the tower."""
        if class_token.ndim != 2 or class_token.shape[-1] != self.config.width:
            raise ValueError(
                f"class token must be [B, {self.config.width}], got {list(class_token.shape)}"
            )
        x = class_token.to(device=self.device, dtype=self.dtype)
        return self.project(self.tower.ln_post(x))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project(self.pooled(pixels))

    def unconditional(self, batch: int = 1) -> torch.Tensor:
        """The learned unconditional vector, repeated: [batch, 1, out_dim]."""
        return self.learnable_vector.expand(batch, -1, -1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What Paint-by-Example trains: mapper, final LN, projection, learned vector (no tower)."""
        modules = (self.mapper, self.final_ln, self.proj_out)
        return [p for m in modules for p in m.parameters()] + [self.learnable_vector]


def init_like_official(encoder: ExemplarEncoder) -> ExemplarEncoder:
    """Re-initialise the trained parts as the official code did (PyTorch defaults, randn vector)."""
    for module in encoder.mapper.modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            module.reset_parameters()
    encoder.final_ln.reset_parameters()
    encoder.proj_out.reset_parameters()
    with torch.no_grad():
        encoder.learnable_vector.normal_(0.0, 1.0)
    return encoder


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
