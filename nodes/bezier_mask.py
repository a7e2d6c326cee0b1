"""Mask Bezier jitter node: each mask's bounding box -> the paper's Bezier-curve edit shape."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..exemplar_core import node_ids
from ..exemplar_core.bezier import DEFAULT_BOX_EXPANSION, DEFAULT_JITTER, bezier_mask_from_mask
from .checks import PaintByExampleInputError, check_mask, check_widgets
from .types import CATEGORY, seed_input


class MaskBezierJitter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.MASK_BEZIER_JITTER,
            display_name="Paint-by-Example Mask Bezier Jitter",
            category=CATEGORY,
            description=(
                "Turns each mask's bounding box into the irregular Bezier-curve shape "
                "Paint-by-Example was trained with (the trainer uses the same function). "
                "Deterministic per seed; batch item i uses seed + i."
            ),
            inputs=[
                io.Mask.Input("mask", tooltip="Edit mask(s), 1 = edit; only the box is used."),
                seed_input("Random seed of the shape (item i of a batch uses seed + i)."),
                io.Int.Input(
                    "jitter",
                    default=DEFAULT_JITTER,
                    min=0,
                    max=256,
                    step=1,
                    tooltip="Pixel jitter of every curve point, uniform in [-jitter, +jitter] "
                    "(training used 5).",
                ),
                io.Float.Input(
                    "box_expansion",
                    default=DEFAULT_BOX_EXPANSION,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Largest share of the free space to the image border by which each "
                    "side bulges out (a random draw per side; training used 0.4).",
                ),
            ],
            outputs=[
                io.Mask.Output(
                    display_name="mask",
                    tooltip="The Bezier edit mask(s), values 0 or 1, same size and batch.",
                )
            ],
        )

    @classmethod
    def execute(
        cls,
        mask: torch.Tensor,
        seed: int = 0,
        jitter: int = DEFAULT_JITTER,
        box_expansion: float = DEFAULT_BOX_EXPANSION,
    ) -> io.NodeOutput:
        check_widgets(cls, locals())
        masks = check_mask(mask, "mask").float()
        for index, item in enumerate(masks):
            if not bool((item >= 0.5).any()):
                raise PaintByExampleInputError(
                    f"mask {index} is empty (no pixel >= 0.5): there is no box to reshape; "
                    f"mark the area to edit in white"
                )
        out = bezier_mask_from_mask(
            masks.cpu(), seed=int(seed), jitter=int(jitter), box_expansion=float(box_expansion)
        )
        return io.NodeOutput(out)
