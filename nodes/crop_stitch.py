"""Crop For Exemplar Edit and Stitch Exemplar Edit, and the crop steps the Inpaint Sampler shares.

The sampler does crop -> sample -> stitch in one node; these two nodes split it so the window can
go through any sampler (or a second, refining pass) in between. Both paths call the same
functions here (``edit_masks``, ``crop_one``, ``stitch_one``) over ``exemplar_core.crop`` and
``exemplar_core.masks.grow_and_blur``: there is one implementation of the crop logic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..exemplar_core import node_ids
from ..exemplar_core.checks import (
    CONTEXT_MARGIN_MAX,
    FEATHER_MAX,
    MASK_BLUR_MAX,
    MASK_GROW_MAX,
    RESOLUTION_MAX,
    SettingError,
)
from ..exemplar_core.crop import Window, blend_back, prepare_window, resize
from ..exemplar_core.masks import binarize_edit_mask, grow_and_blur
from .checks import (
    PaintByExampleInputError,
    check_batch,
    check_edit_mask_content,
    check_image,
    check_mask,
    check_same_size,
    check_widgets,
)
from .model_builder import model_native_size, size_multiple
from .types import CATEGORY, PbECrop

DEFAULT_MULTIPLE = 64  # without a model: the published model's size multiple
DEFAULT_RESOLUTION = 512  # without a model: the published model's native size


# ------------------------------------------------------------------------------------- inputs
# The window inputs the sampler and Crop For Exemplar Edit both declare.


def context_margin_input() -> io.Float.Input:
    return io.Float.Input(
        "context_margin",
        default=0.25,
        min=0.0,
        max=CONTEXT_MARGIN_MAX,
        step=0.05,
        tooltip="Context around the mask's box, as a share of its longer side, on each side of "
        "the processed window.",
    )


def resolution_input(tooltip: str) -> io.Int.Input:
    """The window's longer side (0 = the model's own size); the sampler and Crop word the
    default differently, so each gives its tooltip."""
    return io.Int.Input(
        "resolution", default=0, min=0, max=RESOLUTION_MAX, step=16, tooltip=tooltip
    )


def feather_input() -> io.Int.Input:
    return io.Int.Input(
        "feather",
        default=16,
        min=0,
        max=FEATHER_MAX,
        tooltip="Pixels over which the edit blends into the source outside the mask.",
    )


def color_match_input() -> io.Boolean.Input:
    return io.Boolean.Input(
        "color_match",
        default=False,
        tooltip="Match the window's colours to the source's kept pixels (removes VAE colour "
        "drift).",
    )


def mask_grow_input(optional: bool) -> io.Int.Input:
    return io.Int.Input(
        "mask_grow",
        default=0,
        min=-MASK_GROW_MAX,
        max=MASK_GROW_MAX,
        optional=optional,
        tooltip="Pixels to grow the edit mask by (negative shrinks it), with a round-ish "
        "(octagonal) shape, before the window is planned. Enlarges the repainted area; the "
        "feather (the blend) stays separate.",
    )


def mask_blur_input(optional: bool) -> io.Int.Input:
    return io.Int.Input(
        "mask_blur",
        default=0,
        min=0,
        max=MASK_BLUR_MAX,
        optional=optional,
        tooltip="Radius in pixels of a blur of the edit mask (after the grow), re-binarised at "
        "0.5: rounds its corners and removes specks and gaps narrower than about the radius. "
        "The mask stays hard; the feather does the blending.",
    )


# ---------------------------------------------------------------------------- shared steps


def edit_masks(images: torch.Tensor, mask: object, mask_grow: int, mask_blur: int) -> torch.Tensor:
    """images [N, H, W, 3]; mask MASK with N or 1 items -> [N or 1, H, W] binary edit masks,
    grown and blurred; refuses an empty mask, and a full one after the grow."""
    masks = check_mask(mask, "mask").float()
    check_batch(masks.shape[0], images.shape[0], "masks")
    check_same_size(masks, images)
    edit = binarize_edit_mask(masks.clamp(0, 1))
    for index in range(edit.shape[0]):
        check_edit_mask_content(edit[index], index)
    try:
        grown = grow_and_blur(edit, mask_grow, mask_blur)
    except SettingError as err:
        raise PaintByExampleInputError(str(err)) from None
    if grown is not edit:
        for index in range(grown.shape[0]):
            check_edit_mask_content(grown[index], index)
    return grown


def window_size(model, vae, resolution: int) -> tuple[int, int]:
    """(resolution, size multiple) of the processed window: the model's native size (512 for a
    MODEL not of this pack) and its UNet's and VAE's multiple when a model is given, else 512
    and 64; refuses a resolution that is not a multiple."""
    if model is not None:
        multiple = size_multiple(model, vae)
        resolution = resolution or model_native_size(model)
        needs = "which this model needs (its UNet's and VAE's size multiple)"
    else:
        multiple = DEFAULT_MULTIPLE
        resolution = resolution or DEFAULT_RESOLUTION
        needs = (
            "which the window needs without a model; connect model and vae to use the "
            "model's own size multiple instead"
        )
    if resolution < multiple or resolution % multiple:
        raise PaintByExampleInputError(
            f"resolution {resolution} is not a multiple of {multiple}, {needs}"
        )
    return resolution, multiple


@dataclass(frozen=True)
class CropItem:
    """One image's crop: the source and its full-size edit mask, and the window cut from it."""

    source: torch.Tensor  # [1, 3, H, W] 0..1, CPU
    edit_mask: torch.Tensor  # [1, 1, H, W] exactly 0 or 1 (grown and blurred), 1 = repaint
    window: Window  # region, window pixels and binary window mask at processing size


@dataclass(frozen=True)
class CropDescription:
    """What flows through a PBE_CROP socket: one item per image, and the stitch feather."""

    items: tuple[CropItem, ...]
    feather: int

    @property
    def source_size(self) -> tuple[int, int]:
        """(width, height) of the cropped images."""
        height, width = self.items[0].source.shape[-2:]
        return width, height


def crop_one(
    source: torch.Tensor,
    edit_mask: torch.Tensor,
    context_margin: float,
    resolution: int,
    feather: int,
    multiple: int,
) -> CropItem:
    """source [1, 3, H, W] 0..1, edit_mask [H, W] binary -> its window (``prepare_window``)."""
    full_mask = edit_mask[None, None]
    window = prepare_window(source, full_mask, context_margin, resolution, feather, multiple)
    return CropItem(source, full_mask, window)


def stitch_one(
    item: CropItem,
    edited: torch.Tensor,
    feather: int,
    color_match: bool,
    into: torch.Tensor | None = None,
) -> torch.Tensor:
    """edited [1, 3, h, w] 0..1 (any size: resized to the window's) -> [1, 3, H, W]: blended
    into ``into`` (default: the item's source) over the mask's feather band, the rest bit-exact."""
    return blend_back(
        item.source if into is None else into,
        edited,
        item.window,
        item.edit_mask,
        feather,
        color_match,
    )


def to_bchw(image: torch.Tensor) -> torch.Tensor:
    return image.permute(0, 3, 1, 2)


def to_bhwc(image: torch.Tensor) -> torch.Tensor:
    return image.permute(0, 2, 3, 1)


def _common(tensors: list[torch.Tensor], mode: str) -> torch.Tensor:
    """[1, C, h_i, w_i] each -> [N, C, h, w] at the largest window's size."""
    size = max(tensors, key=lambda t: t.shape[-1] * t.shape[-2]).shape[-2:]
    same = [t if t.shape[-2:] == size else resize(t, tuple(size), mode) for t in tensors]
    return torch.cat(same)


# -------------------------------------------------------------------------------------- nodes


class CropForExemplarEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.CROP_FOR_EDIT,
            display_name="Paint-by-Example Crop For Exemplar Edit",
            category=CATEGORY,
            description=(
                "Cuts the window the Inpaint Sampler would process around the mask (with "
                "context, at the processing resolution), for any sampler or a second pass; "
                "Stitch Exemplar Edit puts the edited window back. N images take N or 1 masks."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Source image(s) to edit, any size."),
                io.Mask.Input(
                    "mask",
                    tooltip="Edit mask, 1 (white) = repaint; the image's size.",
                ),
                io.Model.Input(
                    "model",
                    optional=True,
                    tooltip="Optional: the MODEL that will sample the window. With the VAE it "
                    "sets the window's size multiple (its UNet's and VAE's) and, for a "
                    "Paint-by-Example model, the default resolution (its native size; 512 for "
                    "any other MODEL); without them: multiples of 64 and 512 px.",
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip="Optional, with model: the VAE that will encode the window.",
                ),
                context_margin_input(),
                resolution_input(
                    "Longer side of the window output. 0 = the training resolution of "
                    "a connected Paint-by-Example model, else 512."
                ),
                feather_input(),
                mask_grow_input(optional=False),
                mask_blur_input(optional=False),
            ],
            outputs=[
                io.Image.Output(
                    display_name="window",
                    tooltip="The window(s) at processing size; windows of different sizes in a "
                    "batch are resized to the largest (Stitch resizes each back).",
                ),
                io.Mask.Output(
                    display_name="window_mask",
                    tooltip="The binary edit mask of each window (after grow and blur), 1 = "
                    "repaint; for InpaintModelConditioning.",
                ),
                PbECrop.Output(
                    display_name="crop",
                    tooltip="Where each window lies in its image, for Stitch Exemplar Edit.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        image: torch.Tensor,
        mask: torch.Tensor,
        model=None,
        vae=None,
        context_margin: float = 0.25,
        resolution: int = 0,
        feather: int = 16,
        mask_grow: int = 0,
        mask_blur: int = 0,
    ) -> io.NodeOutput:
        check_widgets(cls, locals())
        if (model is None) != (vae is None):
            raise PaintByExampleInputError(
                "connect both model and vae (they set the window's size multiple together), "
                "or neither (then multiples of 64 and 512 px)"
            )
        images = check_image(image, "image").float().cpu()
        edits = edit_masks(images, mask, mask_grow, mask_blur).cpu()
        resolution, multiple = window_size(model, vae, resolution)
        items = tuple(
            crop_one(
                to_bchw(images[index : index + 1]),
                edits[min(index, edits.shape[0] - 1)],
                context_margin,
                resolution,
                feather,
                multiple,
            )
            for index in range(images.shape[0])
        )
        windows = _common([item.window.image for item in items], "bicubic").clamp(0, 1)
        window_masks = _common([item.window.edit_mask for item in items], "bilinear")
        return io.NodeOutput(
            to_bhwc(windows),
            binarize_edit_mask(window_masks)[:, 0],
            CropDescription(items, int(feather)),
        )


class StitchExemplarEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_ids.STITCH_EDIT,
            display_name="Paint-by-Example Stitch Exemplar Edit",
            category=CATEGORY,
            description=(
                "Puts edited window(s) back where Crop For Exemplar Edit cut them: blended over "
                "the mask's feather band, the image outside it bit for bit."
            ),
            inputs=[
                PbECrop.Input("crop", tooltip="The crop output of Crop For Exemplar Edit."),
                io.Image.Input(
                    "edited",
                    tooltip="The edited window(s), any size (each is resized back to its "
                    "window). One per cropped image, or several for one cropped image "
                    "(variants).",
                ),
                io.Image.Input(
                    "image",
                    optional=True,
                    tooltip="Optional: stitch into this image instead of the cropped one (it "
                    "must have the cropped image's size), e.g. to apply a second edit.",
                ),
                color_match_input(),
            ],
            outputs=[
                io.Image.Output(
                    display_name="IMAGE",
                    tooltip="The image(s) at full resolution with the edit stitched in.",
                )
            ],
        )

    @classmethod
    def execute(
        cls,
        crop: CropDescription,
        edited: torch.Tensor,
        image: torch.Tensor | None = None,
        color_match: bool = False,
    ) -> io.NodeOutput:
        check_widgets(cls, locals())
        if not isinstance(crop, CropDescription):
            raise PaintByExampleInputError(
                f"crop must be the crop output of Paint-by-Example Crop For Exemplar Edit, got "
                f"{type(crop).__name__}"
            )
        windows = to_bchw(check_image(edited, "edited").float().cpu())
        count, items = windows.shape[0], crop.items
        if len(items) == 1:
            pairs = [(items[0], index) for index in range(count)]
        elif count == len(items):
            pairs = [(item, index) for index, item in enumerate(items)]
        else:
            raise PaintByExampleInputError(
                f"{count} edited windows for a crop of {len(items)} images: give one edited "
                f"window per cropped image (or any number for a crop of one image)"
            )
        targets = None
        if image is not None:
            targets = to_bchw(check_image(image, "image").float().cpu())
            width, height = crop.source_size
            if tuple(targets.shape[-2:]) != (height, width):
                raise PaintByExampleInputError(
                    f"image is {targets.shape[-1]}x{targets.shape[-2]} but the crop was made "
                    f"from a {width}x{height} image: connect an image of the cropped image's "
                    f"size, or leave image unconnected to stitch into the cropped image"
                )
            check_batch(targets.shape[0], len(pairs), "images")
        out = []
        for position, (item, index) in enumerate(pairs):
            into = None if targets is None else targets[min(position, targets.shape[0] - 1)][None]
            out.append(
                stitch_one(item, windows[index : index + 1], crop.feather, color_match, into)
            )
        return io.NodeOutput(to_bhwc(torch.cat(out)))
