"""The checkpoint container: ``PbECheckpoint``, ``CheckpointError``, the format names and prefixes.

Every layout is read into a ``PbECheckpoint`` with LDM UNet/VAE keys and our encoder keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..dtypes import DTYPES
from ..model import ModelConfigs

Tensor = torch.Tensor
StateDict = dict[str, Tensor]
Format = Literal["official-ckpt", "official-safetensors", "diffusers", "single-file"]

FORMAT_NAME = "paint-by-example-comfy"
FORMAT_VERSION = "1"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
ENCODER_PREFIX = "exemplar_encoder."
RESERVED_METADATA = ("format", "format_version", "unet_config", "vae_config", "encoder_config")


class CheckpointError(ValueError):
    """A file is not a (readable) Paint-by-Example checkpoint; the message says what was found."""


@dataclass
class PbECheckpoint:
    """A Paint-by-Example model's weights in the canonical layout, plus its architecture.

    ``unet``: LDM UNet keys without prefix (``input_blocks.0.0.weight``); ``vae``: LDM VAE keys
    without prefix (``encoder.conv_in.weight``); ``encoder``: ``ExemplarEncoder.state_dict()`` keys.
    ``source``: where it was read from; ``format``: one of ``Format`` (or ``"model"``);
    ``metadata``: extra strings kept in the single file (training info, provenance).
    """

    unet: StateDict
    vae: StateDict
    encoder: StateDict
    configs: ModelConfigs
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "model"

    def parts(self) -> dict[str, StateDict]:
        return {"unet": self.unet, "vae": self.vae, "encoder": self.encoder}

    def parameter_counts(self) -> dict[str, int]:
        """Element counts per part, ``encoder.tower`` / ``encoder.trained`` split out, and total."""
        counts = {name: _numel(sd) for name, sd in self.parts().items()}
        tower = _numel({k: v for k, v in self.encoder.items() if k.startswith("tower.")})
        counts["encoder.tower"] = tower
        counts["encoder.trained"] = counts["encoder"] - tower
        counts["total"] = counts["unet"] + counts["vae"] + counts["encoder"]
        return counts

    def dtypes(self) -> dict[str, str]:
        """The dtypes each part's floating tensors use, e.g. ``{"unet": "float16"}``."""
        result = {}
        for name, sd in self.parts().items():
            found = sorted(
                {str(t.dtype).removeprefix("torch.") for t in sd.values() if t.is_floating_point()}
            )
            result[name] = "+".join(found) or "none"
        return result


def _numel(state_dict: Mapping[str, Tensor]) -> int:
    return sum(math.prod(t.shape) for t in state_dict.values())


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype given as a ``torch.dtype`` or a ``DTYPES`` name (``"fp16"``); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def prepare_tensors(tensors: Mapping[str, Tensor], dtype: torch.dtype | None) -> StateDict:
    """CPU, contiguous, no shared storage (safetensors refuses it); floating tensors cast."""
    out: StateDict = {}
    seen: set[int] = set()
    for key, tensor in tensors.items():
        if tensor.device.type == "meta":
            raise CheckpointError(f"{key} has no data (meta tensor); load the checkpoint fully")
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        ptr = t.untyped_storage().data_ptr()
        if not t.is_contiguous() or ptr in seen or t.untyped_storage().nbytes() != t.nbytes:
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out
