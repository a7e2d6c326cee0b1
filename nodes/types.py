"""Types shared by the nodes: the exemplar encoder handle and its ComfyUI socket type."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..exemplar_core.checks import SEED_MAX, SIMILARITY_MAX
from ..exemplar_core.config import EncoderConfig
from ..exemplar_core.guidance import DEFAULT_SIMILARITY

# The socket type of the exemplar encoder. The id is stable: saved workflows refer to it.
PbEEncoder = io.Custom("PBE_ENCODER")
# The socket type of a crop description (Crop For Exemplar Edit -> Stitch Exemplar Edit).
PbECrop = io.Custom("PBE_CROP")

# Key of the positive CONDITIONING's extras dict under which Exemplar Encode leaves the exemplar
# as the encoder saw it ([B, S, S, 3] float 0..1 on the CPU, S = the encoder's input size), so
# the sampler's preview can show it. ComfyUI's samplers ignore keys they do not know.
EXEMPLAR_VIEW_KEY = "paint_by_example_exemplar_view"

CATEGORY = "paint-by-example"


def seed_input(tooltip: str) -> io.Int.Input:
    """The ``seed`` input every random node of the pack declares: ComfyUI's full seed range, with
    the widget's control-after-generate menu (fixed / increment / randomize)."""
    return io.Int.Input(
        "seed", default=0, min=0, max=SEED_MAX, control_after_generate=True, tooltip=tooltip
    )


def similarity_input(name: str, tooltip: str, **extra) -> io.Float.Input:
    """A similarity-scale input (``similarity``, ``similarity_end``): the paper's default 5, the
    range the core accepts (0..SIMILARITY_MAX) in steps of 0.1."""
    return io.Float.Input(
        name,
        default=DEFAULT_SIMILARITY,
        min=0.0,
        max=SIMILARITY_MAX,
        step=0.1,
        tooltip=tooltip,
        **extra,
    )


class EncoderContainer(torch.nn.Module):
    """Holds the ExemplarEncoder for ComfyUI's ModelPatcher, which sets bookkeeping attributes
    (``device``, ``model_loaded_weight_memory``...) on the module it manages; the encoder's own
    read-only ``device`` property must not be one of them."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


@dataclass
class ExemplarEncoderHandle:
    """What flows through a PBE_ENCODER socket.

    patcher: a ``comfy.model_patcher.ModelPatcher`` around an ``ExemplarEncoder`` so ComfyUI loads
    it to the device when needed and offloads it under memory pressure; config: its architecture;
    dtype: the weight dtype; source: the file it came from (for messages).
    """

    patcher: object
    config: EncoderConfig
    dtype: torch.dtype
    source: str

    @property
    def encoder(self) -> torch.nn.Module:
        return self.patcher.model.encoder  # type: ignore[attr-defined]

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    @property
    def has_tower(self) -> bool:
        """False when the Loader skipped the CLIP tower (clip_tower "skip"): only the Exemplar
        Mapper can use this encoder then."""
        return bool(self.encoder.has_tower)


# Exemplar Encode's message for an encoder loaded without its tower.
NO_TOWER_MESSAGE = (
    "this exemplar encoder was loaded without its CLIP tower (Loader clip_tower 'skip'): use "
    "CLIPVisionEncode + Paint-by-Example Exemplar Mapper, or set the Loader's clip_tower to 'load'"
)
