"""Architecture configs stored with the weights, so any encoder the trainer builds loads again."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The DDPM schedule Paint-by-Example was trained with (LDM "linear" == diffusers "scaled_linear").
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
LATENT_SCALE = 0.18215


class ConfigError(ValueError):
    """A stored or user-given config is malformed."""


@dataclass(frozen=True)
class EncoderConfig:
    """The exemplar encoder: open_clip vision tower -> class token -> mapper -> LN -> projection.

    The defaults are the published Paint-by-Example encoder (OpenAI CLIP ViT-L/14 at 224 px with
    QuickGELU, a 5-block single-head mapper, 768-d output for the SD1 UNet's cross-attention).
    """

    backbone: str = "ViT-L-14-quickgelu"  # the open_clip model name the tower was built from
    image_size: int = 224
    patch_size: int = 14
    width: int = 1024  # tower width == mapper width
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    quick_gelu: bool = True
    mapper_layers: int = 5
    mapper_heads: int = 1
    out_dim: int = 768
    mean: tuple[float, float, float] = field(default=CLIP_MEAN)
    std: tuple[float, float, float] = field(default=CLIP_STD)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "width", "layers", "heads", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"encoder config: {name} must be a positive integer, got {value!r}"
                )
        if not isinstance(self.mapper_layers, int) or self.mapper_layers < 0:
            raise ConfigError(
                f"encoder config: mapper_layers must be >= 0, got {self.mapper_layers!r}"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"encoder config: image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )
        if self.width % self.heads or self.width % max(self.mapper_heads, 1):
            raise ConfigError(
                f"encoder config: width {self.width} must divide by heads {self.heads} and "
                f"mapper_heads {self.mapper_heads}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("encoder config: mean and std need 3 values (RGB)")

    @property
    def head_width(self) -> int:
        return self.width // self.heads

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"encoder config has unknown keys {unknown}; expected a subset of {sorted(known)}"
            )
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @classmethod
    def from_open_clip(cls, backbone: str, **overrides: Any) -> EncoderConfig:
        """Build a config for any ViT backbone open_clip knows by name (no weights are loaded)."""
        import open_clip

        model_cfg = open_clip.get_model_config(backbone)
        if model_cfg is None:
            raise ConfigError(
                f"open_clip has no model config named {backbone!r}; "
                f"see open_clip.list_models() for the names it knows"
            )
        vision = model_cfg["vision_cfg"]
        if "timm_model_name" in vision and vision["timm_model_name"]:
            raise ConfigError(
                f"{backbone!r} is a timm tower; only open_clip ViT towers are supported"
            )
        if isinstance(vision.get("layers"), (list, tuple)):
            raise ConfigError(f"{backbone!r} is a ResNet tower; only ViT towers are supported")
        width = int(vision.get("width", 768))
        values: dict[str, Any] = {
            "backbone": backbone,
            "image_size": int(vision.get("image_size", 224)),
            "patch_size": int(vision.get("patch_size", 16)),
            "width": width,
            "layers": int(vision.get("layers", 12)),
            "heads": width // int(vision.get("head_width", 64)),
            "mlp_ratio": float(vision.get("mlp_ratio", 4.0)),
            "quick_gelu": bool(model_cfg.get("quick_gelu", False)),
        }
        values.update(overrides)
        return cls(**values)
