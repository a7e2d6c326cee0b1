"""Generate the workflow templates (UI format), their API-format twins and their thumbnails.

    python workflows/build.py                  # write workflows/*.json and workflows/api/*.json
    python workflows/build.py --thumbnails     # also run every template in a real ComfyUI and
                                               # write workflows/<name>.jpg from its results
    python workflows/build.py --check          # exit 1 if a file differs from the source or a
                                               # thumbnail was made from another template

The source is ``WORKFLOWS`` below: nodes with named inputs (literal widget values or links), their
place on the canvas, a Note saying what the template shows, groups for its stages, and what its
thumbnail shows. ``NODE_SPECS`` gives each node type's input order, socket types and outputs,
which the UI format needs (its ``widgets_values`` are positional); the host tests check it against
ComfyUI's ``/object_info``, and the browser tests check the layout in the real frontend.

Thumbnails come from a real run of each template (its API twin, through the headless runner) with
the embedded model; a template that needs model files the pack does not ship (the CLIP Vision +
Exemplar Mapper path) is not run: its thumbnail shows its inputs and says what the result needs.
Each one carries a stamp: a hash of the template, the model and the example inputs it was made
from, so ``--check`` finds a stale thumbnail without ComfyUI. ``--thumbnails``
starts a ComfyUI from ``COMFYUI_PATH`` with the pack installed as a user would have it, or uses a
running one given with ``--server`` (it must have this pack and its example inputs).
Everything else runs without ComfyUI.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run as a script: the checkout's exemplar_core, not an installed one
    sys.path.insert(0, str(REPO))

from exemplar_core import node_ids  # noqa: E402 (needs the line above)

API_DIR = HERE / "api"
DEFAULT_MODEL = "pbe-mini.safetensors"  # the embedded model: templates run on install
MODEL_FILE = REPO / "models" / DEFAULT_MODEL
EXAMPLE_INPUTS = REPO / "example_inputs"  # installed into ComfyUI's input folder as pbe_example_*
EXAMPLE_PREFIX = "pbe_example_"  # as nodes/folders.py installs them (that module needs ComfyUI)


@dataclass(frozen=True)
class Spec:
    """A node type as the UI format needs it.

    inputs: (name, type) in ComfyUI's input order; a type in WIDGET_TYPES (or "COMBO") is a
    widget, anything else a socket. seeded: widget names followed by a control_after_generate
    value. outputs: (name, type). upload: image loaders carry an extra "image" upload widget value.
    size: the node's size on the canvas (width, height of the body below the title bar), at
    least what the frontend draws it at (image loaders and SaveImage get room for a preview).
    virtual: a frontend-only node (Note) that is not part of the prompt.
    """

    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...] = ()
    seeded: tuple[str, ...] = ()
    upload: bool = False
    size: tuple[int, int] = (330, 120)
    virtual: bool = False


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
PREVIEW = (330, 340)  # a node that shows an image: room for a 64-128 px example and its caption

NODE_SPECS: dict[str, Spec] = {
    "Note": Spec(inputs=(("text", "STRING"),), virtual=True, size=(330, 380)),
    "LoadImage": Spec(
        inputs=(("image", "COMBO"),),
        outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK")),
        upload=True,
        size=PREVIEW,
    ),
    "LoadImageMask": Spec(
        inputs=(("image", "COMBO"), ("channel", "COMBO")),
        outputs=(("MASK", "MASK"),),
        upload=True,
        size=PREVIEW,
    ),
    "SaveImage": Spec(inputs=(("images", "IMAGE"), ("filename_prefix", "STRING")), size=PREVIEW),
    "CLIPVisionLoader": Spec(
        inputs=(("clip_name", "COMBO"),), outputs=(("CLIP_VISION", "CLIP_VISION"),), size=(330, 60)
    ),
    "CLIPVisionEncode": Spec(
        inputs=(("clip_vision", "CLIP_VISION"), ("image", "IMAGE"), ("crop", "COMBO")),
        outputs=(("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT"),),
        size=(330, 80),
    ),
    "MaskToImage": Spec(inputs=(("mask", "MASK"),), outputs=(("IMAGE", "IMAGE"),), size=(200, 30)),
    "ImageBatch": Spec(
        inputs=(("image1", "IMAGE"), ("image2", "IMAGE")),
        outputs=(("IMAGE", "IMAGE"),),
        size=(160, 50),
    ),
    "EmptyLatentImage": Spec(
        inputs=(("width", "INT"), ("height", "INT"), ("batch_size", "INT")),
        outputs=(("LATENT", "LATENT"),),
        size=(330, 110),
    ),
    "VAEDecode": Spec(
        inputs=(("samples", "LATENT"), ("vae", "VAE")),
        outputs=(("IMAGE", "IMAGE"),),
        size=(160, 50),
    ),
    "InpaintModelConditioning": Spec(
        inputs=(
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("vae", "VAE"),
            ("pixels", "IMAGE"),
            ("mask", "MASK"),
            ("noise_mask", "BOOLEAN"),
        ),
        outputs=(
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent", "LATENT"),
        ),
        size=(330, 140),
    ),
    "KSampler": Spec(
        inputs=(
            ("model", "MODEL"),
            ("seed", "INT"),
            ("steps", "INT"),
            ("cfg", "FLOAT"),
            ("sampler_name", "COMBO"),
            ("scheduler", "COMBO"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
            ("denoise", "FLOAT"),
        ),
        outputs=(("LATENT", "LATENT"),),
        seeded=("seed",),
        size=(330, 270),
    ),
    node_ids.LOADER: Spec(
        inputs=(("model_name", "COMBO"), ("weight_dtype", "COMBO"), ("clip_tower", "COMBO")),
        outputs=(("MODEL", "MODEL"), ("VAE", "VAE"), ("PBE_ENCODER", "PBE_ENCODER")),
        size=(330, 130),
    ),
    node_ids.EXEMPLAR_ENCODE: Spec(
        inputs=(
            ("encoder", "PBE_ENCODER"),
            ("exemplar", "IMAGE"),
            ("combine", "COMBO"),
            ("resize", "COMBO"),
            ("background_fill", "FLOAT"),
            ("exemplar_mask", "MASK"),
            ("object_expand", "FLOAT"),
            ("exemplar_mask_marks", "COMBO"),
        ),
        outputs=(
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("exemplar_view", "IMAGE"),
        ),
        size=(330, 210),
    ),
    node_ids.EXEMPLAR_MAPPER: Spec(
        inputs=(
            ("encoder", "PBE_ENCODER"),
            ("clip_vision_output", "CLIP_VISION_OUTPUT"),
            ("combine", "COMBO"),
        ),
        outputs=(("positive", "CONDITIONING"), ("negative", "CONDITIONING")),
        size=(330, 100),
    ),
    node_ids.MASK_BEZIER_JITTER: Spec(
        inputs=(("mask", "MASK"), ("seed", "INT"), ("jitter", "INT"), ("box_expansion", "FLOAT")),
        outputs=(("mask", "MASK"),),
        seeded=("seed",),
        size=(330, 140),
    ),
    node_ids.INPAINT_SAMPLER: Spec(
        inputs=(
            ("model", "MODEL"),
            ("vae", "VAE"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("image", "IMAGE"),
            ("mask", "MASK"),
            ("seed", "INT"),
            ("steps", "INT"),
            ("similarity", "FLOAT"),
            ("sampler_name", "COMBO"),
            ("scheduler", "COMBO"),
            ("denoise", "FLOAT"),
            ("context_margin", "FLOAT"),
            ("resolution", "INT"),
            ("feather", "INT"),
            ("color_match", "BOOLEAN"),
            ("mask_grow", "INT"),
            ("mask_blur", "INT"),
        ),
        outputs=(("IMAGE", "IMAGE"), ("LATENT", "LATENT"), ("preview", "IMAGE")),
        seeded=("seed",),
        size=(330, 450),
    ),
    node_ids.CROP_FOR_EDIT: Spec(
        inputs=(  # ComfyUI lists the optional model and vae after the required inputs
            ("image", "IMAGE"),
            ("mask", "MASK"),
            ("context_margin", "FLOAT"),
            ("resolution", "INT"),
            ("feather", "INT"),
            ("mask_grow", "INT"),
            ("mask_blur", "INT"),
            ("model", "MODEL"),
            ("vae", "VAE"),
        ),
        outputs=(("window", "IMAGE"), ("window_mask", "MASK"), ("crop", "PBE_CROP")),
        size=(330, 260),
    ),
    node_ids.STITCH_EDIT: Spec(
        inputs=(
            ("crop", "PBE_CROP"),
            ("edited", "IMAGE"),
            ("color_match", "BOOLEAN"),
            ("image", "IMAGE"),
        ),
        outputs=(("IMAGE", "IMAGE"),),
        size=(330, 110),
    ),
    node_ids.SIMILARITY_GUIDANCE: Spec(
        inputs=(
            ("model", "MODEL"),
            ("similarity", "FLOAT"),
            ("schedule", "COMBO"),
            ("similarity_end", "FLOAT"),
            ("sigma_low", "FLOAT"),
            ("sigma_high", "FLOAT"),
            ("rescale_phi", "FLOAT"),
        ),
        outputs=(("MODEL", "MODEL"),),
        size=(340, 180),
    ),
    node_ids.COMPILE_MODEL: Spec(
        inputs=(("model", "MODEL"), ("mode", "COMBO")),
        outputs=(("MODEL", "MODEL"),),
        size=(300, 80),
    ),
}


@dataclass(frozen=True)
class Link:
    node: int
    output: int = 0


@dataclass
class Node:
    id: int
    class_type: str
    title: str
    inputs: dict[str, Any]  # name -> literal value or Link
    pos: tuple[int, int] = (0, 0)  # top-left corner of the body; the title bar sits above it

    @property
    def size(self) -> tuple[int, int]:
        return NODE_SPECS[self.class_type].size

    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) on the canvas, title bar included."""
        x, y = self.pos
        width, height = self.size
        return x, y - TITLE_HEIGHT, x + width, y + height


@dataclass(frozen=True)
class Group:
    """A titled frame around the nodes of one stage."""

    title: str
    members: tuple[int, ...]
    color: str = "#3f789e"


@dataclass(frozen=True)
class Tile:
    """One picture of a thumbnail: an example input file, the ``index``-th image saved by the
    SaveImage node titled ``save``, or a ``text`` saying what a result needs when the template
    cannot run on the embedded model (no picture pretends to be one)."""

    label: str
    input: str | None = None  # file in example_inputs/
    save: str | None = None
    index: int = 0
    text: str | None = None


@dataclass
class Workflow:
    name: str
    description: str
    nodes: list[Node] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    thumbnail: tuple[Tile, ...] = ()

    def real_nodes(self) -> list[Node]:
        """The nodes ComfyUI executes (Notes are the frontend's own)."""
        return [node for node in self.nodes if not NODE_SPECS[node.class_type].virtual]

    @property
    def needs_unshipped_models(self) -> bool:
        """Whether it names model files the pack does not ship (the published weights, a CLIP
        Vision file): the tests put random full-size ones in place to run it."""
        return any(
            node.class_type == "CLIPVisionLoader"
            or node.inputs.get("model_name", DEFAULT_MODEL) != DEFAULT_MODEL
            for node in self.real_nodes()
        )

    @property
    def runs_for_thumbnail(self) -> bool:
        """Whether the thumbnail shows a result of a run (with the embedded model)."""
        return any(tile.save for tile in self.thumbnail)


# ------------------------------------------------------------------------------------------
# Canvas geometry (the frontend's, comfyui-frontend-package 1.27)
# ------------------------------------------------------------------------------------------

TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT
GROUP_HEADER = 64  # a group's title band (font 24 px) and the node badges above title bars
GROUP_PAD = 10
COLUMN = 370  # a 330 px node and a 40 px gap
ROW2 = 600  # bodies of the second row: below the tallest first-row node and both groups' frames
VIEW = (1850, 950)  # canvas area of a 1920x1080 screen, for the view the template opens at
VIEW_MARGIN = 60
MIN_SCALE, MAX_SCALE = 0.8, 1.0  # readable: the frontend draws text in full above about 0.57


def col(index: int) -> int:
    return index * COLUMN


def group_bounding(group: Group, nodes: dict[int, Node]) -> list[int]:
    boxes = [nodes[i].box() for i in group.members]
    left = min(b[0] for b in boxes) - GROUP_PAD
    top = min(b[1] for b in boxes) - GROUP_HEADER
    right = max(b[2] for b in boxes) + GROUP_PAD
    bottom = max(b[3] for b in boxes) + GROUP_PAD
    return [left, top, right - left, bottom - top]


def canvas_bounds(workflow: Workflow) -> tuple[int, int, int, int]:
    nodes = {node.id: node for node in workflow.nodes}
    boxes = [node.box() for node in workflow.nodes]
    for group in workflow.groups:
        x, y, w, h = group_bounding(group, nodes)
        boxes.append((x, y, x + w, y + h))
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def opening_view(workflow: Workflow) -> dict[str, Any]:
    """The zoom and offset the frontend opens the template at (``extra.ds``): the whole graph
    when it fits a 1920x1080 screen at a readable zoom, else its left part (the Note first) at
    the smallest readable zoom."""
    left, top, right, bottom = canvas_bounds(workflow)
    fit = min(
        (VIEW[0] - 2 * VIEW_MARGIN) / (right - left), (VIEW[1] - 2 * VIEW_MARGIN) / (bottom - top)
    )
    scale = round(min(MAX_SCALE, max(MIN_SCALE, fit)), 3)
    offset = [VIEW_MARGIN / scale - left, (VIEW_MARGIN + 40) / scale - top]  # 40: the top bar
    return {"scale": scale, "offset": [round(v, 1) for v in offset]}


# ------------------------------------------------------------------------------------------
# The single source
# ------------------------------------------------------------------------------------------

NOTE_ID = 20  # every template's Note
ROW1_INPUTS = (2, 3, 4)  # source, mask, exemplar
MODEL_GROUP = Group("Model and exemplar encoding", (1, 5), "#8A8")
INPUT_GROUP = Group("Inputs: change these", ROW1_INPUTS, "#b58b2a")

MODEL_NOTE = (
    "model_name: pbe-mini.safetensors is the small demo model that ships with the pack "
    "(64 px synthetic shapes, made to show the mechanics). For photos, put the official "
    "weights (Fantasy-Studio/Paint-by-Example, or this pack's converted single file) in "
    "ComfyUI/models/paint_by_example and pick them here."
)
PUBLISHED_MODEL = "paint-by-example.safetensors"  # the README's convert command writes this name
CLIP_VISION_FILE = "clip-vit-large-patch14.safetensors"  # OpenAI's ViT-L/14, in models/clip_vision
CLIP_TOWER_SKIP = "skip (CLIP Vision + Exemplar Mapper)"
INPUTS_NOTE = (
    "Change the three inputs: source (your photo), mask (white = repaint, the photo's size), "
    "exemplar (a photo of the object to paint in)."
)


def _note(text: str) -> Node:
    return Node(NOTE_ID, "Note", "About this template", {"text": text}, (col(0), 0))


def _loaders(exemplar: str = "exemplar.png", **encode: Any) -> list[Node]:
    """Loader (1), source (2), mask (3), exemplar (4) and Exemplar Encode (5); ``encode``
    overrides the encoder's widget values."""
    return [
        Node(
            1,
            node_ids.LOADER,
            "loader",
            {"model_name": DEFAULT_MODEL, "weight_dtype": "default", "clip_tower": "load"},
            (col(0), ROW2),
        ),
        Node(2, "LoadImage", "source", {"image": f"{EXAMPLE_PREFIX}source.png"}, (col(1), 0)),
        Node(
            3,
            "LoadImageMask",
            "mask",
            {"image": f"{EXAMPLE_PREFIX}mask.png", "channel": "red"},
            (col(2), 0),
        ),
        Node(4, "LoadImage", "exemplar", {"image": f"{EXAMPLE_PREFIX}{exemplar}"}, (col(3), 0)),
        _encode(5, "encode", Link(4, 0), (col(1), ROW2), **encode),
    ]


def _encode(node_id: int, title: str, exemplar: Link, pos: tuple[int, int], **widgets: Any) -> Node:
    return Node(
        node_id,
        node_ids.EXEMPLAR_ENCODE,
        title,
        {
            "encoder": Link(1, 2),
            "exemplar": exemplar,
            "combine": "one per exemplar",
            "resize": "squash",
            "background_fill": 1.0,
            "object_expand": 1.0,
            "exemplar_mask_marks": "object",
            **widgets,
        },
        pos,
    )


def _sampler(
    node_id: int,
    title: str,
    model: Link,
    mask: Link,
    similarity: float,
    pos: tuple[int, int],
    **inputs: Any,
) -> Node:
    """The Inpaint Sampler on the source (2) with node 5's conditioning; ``inputs`` overrides."""
    return Node(
        node_id,
        node_ids.INPAINT_SAMPLER,
        title,
        {
            "model": model,
            "vae": Link(1, 1),
            "positive": Link(5, 0),
            "negative": Link(5, 1),
            "image": Link(2, 0),
            "mask": mask,
            "seed": 0,
            "steps": 50,
            "similarity": similarity,
            "sampler_name": "ddim",
            "scheduler": "ddim_uniform",
            "denoise": 1.0,
            "context_margin": 0.25,
            "resolution": 0,
            "feather": 16,
            "color_match": False,
            "mask_grow": 0,
            "mask_blur": 0,
            **inputs,
        },
        pos,
    )


def _save(node_id: int, title: str, images: Link, prefix: str, pos: tuple[int, int]) -> Node:
    return Node(node_id, "SaveImage", title, {"images": images, "filename_prefix": prefix}, pos)


INPUT_TILES = (
    Tile("source", input="source.png"),
    Tile("mask", input="mask.png"),
    Tile("exemplar", input="exemplar.png"),
)

WORKFLOWS: list[Workflow] = [
    Workflow(
        "basic_exemplar_edit",
        "Paint the exemplar into the masked area with the Paint-by-Example sampler.",
        [
            _note(
                "Basic exemplar edit\n\n"
                "Paints the exemplar's object into the white area of the mask, re-posed and "
                "blended into the scene rather than pasted.\n\n"
                f"{INPUTS_NOTE}\n\n"
                "sampler: similarity (5) sets how closely the result follows the exemplar; "
                "3 to 7 is the useful range. Outside the mask's feather band the output is the "
                "source, pixel for pixel.\n\n"
                f"{MODEL_NOTE}"
            ),
            *_loaders(),
            _sampler(6, "sampler", Link(1, 0), Link(3, 0), 5.0, (col(4), 0)),
            _save(7, "save", Link(6, 0), "pbe_edit", (col(5), 0)),
        ],
        [INPUT_GROUP, MODEL_GROUP, Group("Edit and save", (6, 7))],
        INPUT_TILES + (Tile("result", save="save"),),
    ),
    Workflow(
        "stock_ksampler_edit",
        "The same edit from stock nodes: InpaintModelConditioning + KSampler + VAEDecode.",
        [
            _note(
                "The same edit from stock nodes\n\n"
                "The Loader's MODEL works with ComfyUI's own InpaintModelConditioning, KSampler "
                "and VAEDecode: the Loader patches its input layout to Paint-by-Example's. "
                "KSampler's cfg is the similarity. Unlike the pack's sampler, this edits the "
                "whole image at its own size and does not paste back the untouched source.\n\n"
                f"{INPUTS_NOTE} Keep the image small (the demo model works at 64 px).\n\n"
                f"{MODEL_NOTE}"
            ),
            *_loaders(),
            Node(
                6,
                "InpaintModelConditioning",
                "inpaint conditioning",
                {
                    "positive": Link(5, 0),
                    "negative": Link(5, 1),
                    "vae": Link(1, 1),
                    "pixels": Link(2, 0),
                    "mask": Link(3, 0),
                    "noise_mask": True,
                },
                (col(4), 0),
            ),
            Node(
                7,
                "KSampler",
                "ksampler",
                {
                    "model": Link(1, 0),
                    "seed": 0,
                    "steps": 50,
                    "cfg": 5.0,
                    "sampler_name": "ddim",
                    "scheduler": "ddim_uniform",
                    "positive": Link(6, 0),
                    "negative": Link(6, 1),
                    "latent_image": Link(6, 2),
                    "denoise": 1.0,
                },
                (col(4), 210),
            ),
            Node(8, "VAEDecode", "decode", {"samples": Link(7, 0), "vae": Link(1, 1)}, (col(5), 0)),
            _save(9, "save", Link(8, 0), "pbe_stock", (col(5), 110)),
        ],
        [INPUT_GROUP, MODEL_GROUP, Group("Stock ComfyUI nodes", (6, 7, 8, 9))],
        INPUT_TILES + (Tile("result", save="save"),),
    ),
    Workflow(
        "similarity_sweep",
        "One edit at similarity 2, 5 and 9, plus a scheduled, rescaled Similarity Guidance.",
        [
            _note(
                "Similarity sweep\n\n"
                "The same edit at similarity 2, 5 and 9, and once through Similarity Guidance: "
                "similarity 9 falling to 3 over the steps, rescaled (rescale_phi 0.7) against "
                "over-saturation. Low similarity blends the object into the scene; high "
                "similarity copies the exemplar's look more closely.\n\n"
                "The four results are saved as one batch, in that order.\n\n"
                f"{INPUTS_NOTE}\n\n"
                f"{MODEL_NOTE}"
            ),
            *_loaders(),
            _sampler(6, "similarity 2", Link(1, 0), Link(3, 0), 2.0, (col(4), 0)),
            _sampler(7, "similarity 5", Link(1, 0), Link(3, 0), 5.0, (col(5), 0)),
            _sampler(8, "similarity 9", Link(1, 0), Link(3, 0), 9.0, (col(4), ROW2)),
            Node(
                9,
                node_ids.SIMILARITY_GUIDANCE,
                "guidance 9 to 3, rescaled",
                {
                    "model": Link(1, 0),
                    "similarity": 9.0,
                    "schedule": "linear",
                    "similarity_end": 3.0,
                    "sigma_low": 0.0,
                    "sigma_high": 1000.0,
                    "rescale_phi": 0.7,
                },
                (col(3) - 20, ROW2),
            ),
            _sampler(10, "guided", Link(9, 0), Link(3, 0), 5.0, (col(5), ROW2)),
            Node(
                11,
                "ImageBatch",
                "batch 2+5",
                {"image1": Link(6, 0), "image2": Link(7, 0)},
                (col(6), 0),
            ),
            Node(
                12,
                "ImageBatch",
                "batch +9",
                {"image1": Link(11, 0), "image2": Link(8, 0)},
                (col(6), 110),
            ),
            Node(
                13,
                "ImageBatch",
                "batch +guided",
                {"image1": Link(12, 0), "image2": Link(10, 0)},
                (col(6), 220),
            ),
            _save(14, "save", Link(13, 0), "pbe_sweep", (col(6), 330)),
        ],
        [
            INPUT_GROUP,
            MODEL_GROUP,
            Group("Scheduled guidance", (9,), "#a1309b"),
            Group("Similarity 2, 5, 9 and guided", (6, 7, 8, 10)),
            Group("Results, in order", (11, 12, 13, 14)),
        ],
        (
            Tile("similarity 2", save="save", index=0),
            Tile("similarity 5", save="save", index=1),
            Tile("similarity 9", save="save", index=2),
            Tile("guided 9 to 3", save="save", index=3),
        ),
    ),
    Workflow(
        "bezier_mask_demo",
        "Reshape the mask's box into the paper's Bezier shape, then edit with it.",
        [
            _note(
                "Bezier mask\n\n"
                "Paint-by-Example was trained on irregular Bezier-curve masks drawn around the "
                "object's box, not on the object's exact outline. Mask Bezier Jitter turns any "
                "mask's box into that shape (seeded), which is what the model expects: use it "
                "when a rectangle or a tight cut-out gives a pasted look.\n\n"
                f"{INPUTS_NOTE} Only the mask's box matters here.\n\n"
                f"{MODEL_NOTE}"
            ),
            *_loaders(),
            Node(
                6,
                node_ids.MASK_BEZIER_JITTER,
                "bezier",
                {
                    "mask": Link(3, 0),
                    "seed": 0,
                    "jitter": 5,
                    "box_expansion": 0.4,
                },
                (col(2), ROW2),
            ),
            _sampler(7, "sampler", Link(1, 0), Link(6, 0), 5.0, (col(4), 0)),
            _save(8, "save", Link(7, 0), "pbe_bezier_edit", (col(5), 0)),
            Node(9, "MaskToImage", "mask preview", {"mask": Link(6, 0)}, (col(2), ROW2 + 200)),
            _save(10, "save mask", Link(9, 0), "pbe_bezier_mask", (col(3), ROW2)),
        ],
        [
            INPUT_GROUP,
            MODEL_GROUP,
            Group("Bezier mask", (6, 9, 10), "#a1309b"),
            Group("Edit and save", (7, 8)),
        ],
        (
            Tile("source", input="source.png"),
            Tile("Bezier mask", save="save mask"),
            Tile("exemplar", input="exemplar.png"),
            Tile("result", save="save"),
        ),
    ),
    Workflow(
        "clip_vision_mapper_edit",
        "The exemplar through ComfyUI's own CLIP Vision nodes and the Exemplar Mapper.",
        [
            _note(
                "CLIP Vision + Exemplar Mapper\n\n"
                "Paint-by-Example's exemplar encoder is OpenAI's CLIP ViT-L/14 (frozen) followed "
                "by a small mapper. Here the CLIP part is ComfyUI's own: CLIP Vision Loader and "
                "CLIP Vision Encode (crop none = the paper's squash); the Exemplar Mapper turns "
                "its output into the same conditioning as Exemplar Encode. The Loader's "
                "clip_tower skip leaves the checkpoint's own tower unloaded (about 1.2 GB less "
                "at fp32).\n\n"
                "Needs two files the pack does not ship (the small demo model's tower is not "
                "ViT-L, so it cannot run this path):\n"
                "- ComfyUI/models/paint_by_example/paint-by-example.safetensors: the published "
                "weights (Fantasy-Studio/Paint-by-Example), converted as the README shows;\n"
                "- ComfyUI/models/clip_vision/clip-vit-large-patch14.safetensors: OpenAI's CLIP "
                "ViT-L/14 (openai/clip-vit-large-patch14), the file many IPAdapter users have.\n"
                "Other names work: pick your files in the two loaders.\n\n"
                f"{INPUTS_NOTE}"
            ),
            Node(
                1,
                node_ids.LOADER,
                "loader",
                {
                    "model_name": PUBLISHED_MODEL,
                    "weight_dtype": "default",
                    "clip_tower": CLIP_TOWER_SKIP,
                },
                (col(0), ROW2),
            ),
            *_loaders()[1:4],
            Node(
                5,
                node_ids.EXEMPLAR_MAPPER,
                "mapper",
                {
                    "encoder": Link(1, 2),
                    "clip_vision_output": Link(7, 0),
                    "combine": "one per exemplar",
                },
                (col(0), ROW2 + 200),
            ),
            Node(
                6,
                "CLIPVisionLoader",
                "clip vision",
                {"clip_name": CLIP_VISION_FILE},
                (col(1), ROW2),
            ),
            Node(
                7,
                "CLIPVisionEncode",
                "clip vision encode",
                {"clip_vision": Link(6, 0), "image": Link(4, 0), "crop": "none"},
                (col(2), ROW2),
            ),
            _sampler(8, "sampler", Link(1, 0), Link(3, 0), 5.0, (col(4), 0)),
            _save(9, "save", Link(8, 0), "pbe_mapper_edit", (col(5), 0)),
        ],
        [
            INPUT_GROUP,
            Group("Model and exemplar mapper", (1, 5), "#8A8"),
            Group("CLIP Vision (stock nodes)", (6, 7), "#a1309b"),
            Group("Edit and save", (8, 9)),
        ],
        INPUT_TILES
        + (
            Tile(
                "result",
                text="Needs the published\nweights and CLIP\nViT-L/14 (see the\nNote): the demo\n"
                "model's tower is\nnot ViT-L.",
            ),
        ),
    ),
    Workflow(
        "mask_grow_and_blur",
        "The edit area grown and smoothed on the sampler, the stitch feather left as it is.",
        [
            _note(
                "Mask grow and blur\n\n"
                "The same edit twice: with the mask as drawn, and with the edit area grown by "
                "8 px and its outline smoothed (mask_blur 8: blurred, then cut at half). Both "
                "happen before the sampler plans its window, so the repainted area grows; the "
                "blend into the photo (feather 16) stays the same. Shrink with a negative "
                "mask_grow; feather alone widens the blend without repainting more.\n\n"
                "The second row shows each sampler's preview: the window it processed with the "
                "edit area outlined, and the exemplar as the encoder saw it.\n\n"
                f"{INPUTS_NOTE}\n\n"
                f"{MODEL_NOTE}"
            ),
            *_loaders(),
            _sampler(6, "as drawn", Link(1, 0), Link(3, 0), 5.0, (col(4), 0)),
            _sampler(
                7,
                "grown and blurred",
                Link(1, 0),
                Link(3, 0),
                5.0,
                (col(5), 0),
                mask_grow=8,
                mask_blur=8,
            ),
            Node(
                8,
                "ImageBatch",
                "results",
                {"image1": Link(6, 0), "image2": Link(7, 0)},
                (col(4), ROW2),
            ),
            _save(9, "save", Link(8, 0), "pbe_grow_blur", (col(4), ROW2 + 110)),
            Node(
                10,
                "ImageBatch",
                "previews",
                {"image1": Link(6, 2), "image2": Link(7, 2)},
                (col(5), ROW2),
            ),
            _save(11, "save previews", Link(10, 0), "pbe_grow_blur_preview", (col(5), ROW2 + 110)),
        ],
        [
            INPUT_GROUP,
            MODEL_GROUP,
            Group("As drawn, and grown 8 px + blurred 8 px", (6, 7)),
            Group("Results and previews, in that order", (8, 9, 10, 11), "#a1309b"),
        ],
        (
            Tile("as drawn", save="save", index=0),
            Tile("grown 8, blurred 8", save="save", index=1),
            Tile("window, as drawn", save="save previews", index=0),
            Tile("window, grown", save="save previews", index=1),
        ),
    ),
    Workflow(
        "cutout_exemplar_framing",
        "A cut-out (transparent PNG) exemplar: its alpha as the exemplar mask, padded to square.",
        [
            _note(
                "Cut-out exemplar, padded to square\n\n"
                "The exemplar is a transparent PNG. LoadImage gives its transparency as a MASK "
                "(1 = transparent), wired into Exemplar Encode's exemplar_mask with "
                "exemplar_mask_marks background. resize pad_to_square frames the object's box "
                "grown by object_expand (1.2) on a square of background_fill (white) without "
                "stretching it; squash and center_crop are the paper's framings. The saved "
                "exemplar view is what the encoder sees.\n\n"
                "Background removal: ComfyUI 0.3.64 has no background-removal node. With a "
                "ComfyUI whose node library has one, or a pack that adds one (ComfyUI-RMBG, "
                "ComfyUI_essentials...), load an ordinary photo and "
                "connect its MASK to exemplar_mask: exemplar_mask_marks object when white = "
                "the object, background when white = the background.\n\n"
                "Change the inputs: source, mask (white = repaint), exemplar (a cut-out "
                "PNG).\n\n"
                f"{MODEL_NOTE}"
            ),
            *_loaders(
                "exemplar_cutout.png",
                exemplar_mask=Link(4, 1),
                resize="pad_to_square",
                object_expand=1.2,
                exemplar_mask_marks="background",
            ),
            _sampler(6, "sampler", Link(1, 0), Link(3, 0), 5.0, (col(4), 0)),
            _save(7, "save", Link(6, 0), "pbe_cutout_edit", (col(5), 0)),
            _save(8, "save exemplar view", Link(5, 2), "pbe_cutout_view", (col(2), ROW2)),
        ],
        [
            INPUT_GROUP,
            MODEL_GROUP,
            Group("What the encoder sees", (8,), "#a1309b"),
            Group("Edit and save", (6, 7)),
        ],
        (
            Tile("cut-out exemplar", input="exemplar_cutout.png"),
            Tile("encoder's view", save="save exemplar view"),
            Tile("source", input="source.png"),
            Tile("result", save="save"),
        ),
    ),
    Workflow(
        "edit_previews",
        "See why an edit went wrong: the sampler's window with the mask, the encoder's exemplar.",
        [
            _note(
                "Previews\n\n"
                "Two optional outputs show what the model worked on. The sampler's preview: the "
                "window it cut around the mask, at the size it sampled it, with the edit area "
                "outlined, next to the exemplar as the encoder saw it. Exemplar Encode's "
                "exemplar_view: the exemplar after framing, at the encoder's input size.\n\n"
                "A mask that covers too little, a window that cuts the scene, an exemplar "
                "cropped or squashed out of shape: each shows at once here. Connect a Preview "
                "Image instead of a Save Image to keep them out of your output folder.\n\n"
                f"{INPUTS_NOTE}\n\n"
                f"{MODEL_NOTE}"
            ),
            *_loaders(),
            _sampler(6, "sampler", Link(1, 0), Link(3, 0), 5.0, (col(4), 0)),
            _save(7, "save", Link(6, 0), "pbe_edit", (col(5), 0)),
            _save(8, "save exemplar view", Link(5, 2), "pbe_exemplar_view", (col(2), ROW2)),
            _save(9, "save preview", Link(6, 2), "pbe_window_preview", (col(3), ROW2)),
        ],
        [
            INPUT_GROUP,
            MODEL_GROUP,
            Group("Edit and save", (6, 7)),
            Group("Previews", (8, 9), "#a1309b"),
        ],
        (
            Tile("exemplar", input="exemplar.png"),
            Tile("encoder's view", save="save exemplar view"),
            Tile("window preview", save="save preview"),
            Tile("result", save="save"),
        ),
    ),
    Workflow(
        "crop_and_stitch",
        "Crop For Exemplar Edit, any sampler on the window (stock KSampler), Stitch Exemplar Edit.",
        [
            _note(
                "Crop and stitch as their own nodes\n\n"
                "Crop For Exemplar Edit cuts the window around the mask (context_margin), at the "
                "model's size (resolution 0), and gives its edit mask and a crop description. "
                "The window can go through any sampler: here ComfyUI's own "
                "InpaintModelConditioning (noise_mask false), KSampler (cfg is the similarity) "
                "from an empty latent (Paint-by-Example paints from pure noise) and VAEDecode; a "
                "second, refining pass fits in the same place. Stitch Exemplar Edit puts the "
                "edited window back with the feathered blend; outside the blend the photo is "
                "unchanged. The result is the Inpaint Sampler's, bit for bit (same code).\n\n"
                "Empty latent: the window's size for the published model (512 x 512), twice it "
                "for the demo model (128 x 128 for its 64 px window; its VAE shrinks 4x, not "
                "8x).\n\n"
                f"{INPUTS_NOTE}\n\n"
                f"{MODEL_NOTE}"
            ),
            *_loaders(),
            Node(
                6,
                node_ids.CROP_FOR_EDIT,
                "crop",
                {
                    "image": Link(2, 0),
                    "mask": Link(3, 0),
                    "model": Link(1, 0),
                    "vae": Link(1, 1),
                    "context_margin": 0.25,
                    "resolution": 0,
                    "feather": 16,
                    "mask_grow": 0,
                    "mask_blur": 0,
                },
                (col(4), 0),
            ),
            Node(
                7,
                "InpaintModelConditioning",
                "inpaint conditioning",
                {
                    "positive": Link(5, 0),
                    "negative": Link(5, 1),
                    "vae": Link(1, 1),
                    "pixels": Link(6, 0),
                    "mask": Link(6, 1),
                    "noise_mask": False,
                },
                (col(5), 0),
            ),
            Node(
                8,
                "KSampler",
                "ksampler",
                {
                    "model": Link(1, 0),
                    "seed": 0,
                    "steps": 50,
                    "cfg": 5.0,
                    "sampler_name": "ddim",
                    "scheduler": "ddim_uniform",
                    "positive": Link(7, 0),
                    "negative": Link(7, 1),
                    "latent_image": Link(14, 0),
                    "denoise": 1.0,
                },
                (col(5), 210),
            ),
            Node(
                9, "VAEDecode", "decode", {"samples": Link(8, 0), "vae": Link(1, 1)}, (col(5), 530)
            ),
            Node(
                10,
                node_ids.STITCH_EDIT,
                "stitch",
                {"crop": Link(6, 2), "edited": Link(9, 0), "color_match": False},
                (col(6), 0),
            ),
            _save(11, "save", Link(10, 0), "pbe_crop_stitch", (col(6), 170)),
            Node(
                12,
                "ImageBatch",
                "window, edited",
                {"image1": Link(6, 0), "image2": Link(9, 0)},
                (col(4), 290),
            ),
            _save(13, "save windows", Link(12, 0), "pbe_window", (col(4), 400)),
            Node(
                14,
                "EmptyLatentImage",
                "empty latent",
                {"width": 128, "height": 128, "batch_size": 1},
                (col(5), 640),
            ),
        ],
        [
            INPUT_GROUP,
            MODEL_GROUP,
            Group("Crop the window", (6, 12, 13), "#a1309b"),
            Group("Any sampler (stock nodes)", (7, 8, 9, 14)),
            Group("Stitch back and save", (10, 11)),
        ],
        (
            Tile("mask", input="mask.png"),
            Tile("window", save="save windows", index=0),
            Tile("edited window", save="save windows", index=1),
            Tile("stitched", save="save"),
        ),
    ),
    Workflow(
        "two_objects_edit",
        "Several objects in one image: two regions repainted with two exemplars, chained.",
        [
            _note(
                "Several objects in one image\n\n"
                "Two edits chained: the first sampler paints exemplar into mask, the second "
                "paints exemplar 2 into mask 2 on the first one's result. Each edit touches only "
                "its own window, so the first object stays as painted. For more objects, chain "
                "one Exemplar Encode and one sampler per object (each with its own seed and "
                "similarity).\n\n"
                "Change the five inputs: source (your photo), mask and mask 2 (white = repaint, "
                "the photo's size, not overlapping), exemplar and exemplar 2 (photos of the "
                "objects).\n\n"
                f"{MODEL_NOTE}"
            ),
            *_loaders(),
            Node(
                6,
                "LoadImageMask",
                "mask 2",
                {"image": f"{EXAMPLE_PREFIX}mask2.png", "channel": "red"},
                (col(4), 0),
            ),
            Node(
                7,
                "LoadImage",
                "exemplar 2",
                {"image": f"{EXAMPLE_PREFIX}exemplar2.png"},
                (col(5), 0),
            ),
            _encode(8, "encode 2", Link(7, 0), (col(2), ROW2)),
            _sampler(9, "sampler", Link(1, 0), Link(3, 0), 5.0, (col(3), ROW2)),
            _sampler(
                10,
                "sampler 2",
                Link(1, 0),
                Link(6, 0),
                5.0,
                (col(4), ROW2),
                positive=Link(8, 0),
                negative=Link(8, 1),
                image=Link(9, 0),
            ),
            _save(11, "save", Link(10, 0), "pbe_two_objects", (col(5), ROW2)),
        ],
        [
            Group("Inputs: change these", (2, 3, 4, 6, 7), "#b58b2a"),
            Group("Model and exemplar encoding", (1, 5, 8), "#8A8"),
            Group("Edit 1, then edit 2 on its result", (9, 10)),
            Group("Save", (11,)),
        ],
        (
            Tile("source", input="source.png"),
            Tile("exemplar", input="exemplar.png"),
            Tile("exemplar 2", input="exemplar2.png"),
            Tile("both edits", save="save"),
        ),
    ),
]


# ------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------


def is_widget(kind: str) -> bool:
    return kind in WIDGET_TYPES


def to_api(workflow: Workflow) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    for node in workflow.real_nodes():
        spec = NODE_SPECS[node.class_type]
        names = {name for name, _ in spec.inputs}
        unknown = set(node.inputs) - names
        if unknown:
            raise ValueError(f"{workflow.name}: {node.class_type} has no inputs {unknown}")
        inputs = {}
        for name, _ in spec.inputs:
            if name not in node.inputs:
                continue
            value = node.inputs[name]
            inputs[name] = [str(value.node), value.output] if isinstance(value, Link) else value
        prompt[str(node.id)] = {
            "class_type": node.class_type,
            "inputs": inputs,
            "_meta": {"title": node.title},
        }
    return prompt


NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}  # the frontend's own Note colours


def to_ui(workflow: Workflow) -> dict[str, Any]:
    by_id = {node.id: node for node in workflow.nodes}
    links: list[list[Any]] = []
    out_links: dict[tuple[int, int], list[int]] = {}
    ui_nodes = []
    for order, node in enumerate(workflow.nodes):
        spec = NODE_SPECS[node.class_type]
        inputs, widgets = [], []
        for name, kind in spec.inputs:
            value = node.inputs.get(name)
            if is_widget(kind):
                widgets.append(value)
                if name in spec.seeded:
                    widgets.append("fixed")
                continue
            entry: dict[str, Any] = {"name": name, "type": kind, "link": None}
            if isinstance(value, Link):
                source_spec = NODE_SPECS[by_id[value.node].class_type]
                link_id = len(links) + 1
                links.append(
                    [
                        link_id,
                        value.node,
                        value.output,
                        node.id,
                        len(inputs),
                        source_spec.outputs[value.output][1],
                    ]
                )
                out_links.setdefault((value.node, value.output), []).append(link_id)
                entry["link"] = link_id
            inputs.append(entry)
        if spec.upload:
            widgets.append("image")
        ui_node: dict[str, Any] = {
            "id": node.id,
            "type": node.class_type,
            "title": node.title,
            "pos": list(node.pos),
            "size": list(node.size),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": inputs,
            "outputs": [],
            "properties": {} if spec.virtual else {"Node name for S&R": node.class_type},
            "widgets_values": widgets,
        }
        if node.class_type == "Note":
            ui_node.update(NOTE_COLORS)
        ui_nodes.append(ui_node)
    for ui_node in ui_nodes:
        spec = NODE_SPECS[ui_node["type"]]
        ui_node["outputs"] = [
            {
                "name": name,
                "type": kind,
                "links": out_links.get((ui_node["id"], i), []),
                "slot_index": i,
            }
            for i, (name, kind) in enumerate(spec.outputs)
        ]
    groups = [
        {
            "id": index + 1,
            "title": group.title,
            "bounding": group_bounding(group, by_id),
            "color": group.color,
            "font_size": 24,
            "flags": {},
        }
        for index, group in enumerate(workflow.groups)
    ]
    return {
        "last_node_id": max(by_id),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"info": {"description": workflow.description}, "ds": opening_view(workflow)},
        "version": 0.4,
    }


def ui_to_api(ui: dict[str, Any]) -> dict[str, Any]:
    """Read a UI-format workflow back into API format (the agreement check of the tests)."""
    link_source = {link[0]: (link[1], link[2]) for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        spec = NODE_SPECS[node["type"]]
        if spec.virtual:
            continue
        widgets = list(node["widgets_values"])
        sockets = {entry["name"]: entry["link"] for entry in node["inputs"]}
        inputs: dict[str, Any] = {}
        for name, kind in spec.inputs:
            if is_widget(kind):
                inputs[name] = widgets.pop(0)
                if name in spec.seeded:
                    widgets.pop(0)
            elif sockets.get(name) is not None:
                source, output = link_source[sockets[name]]
                inputs[name] = [str(source), output]
        prompt[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node["title"]},
        }
    return prompt


def render_all() -> dict[Path, str]:
    files = {}
    for workflow in WORKFLOWS:
        files[HERE / f"{workflow.name}.json"] = json.dumps(to_ui(workflow), indent=2) + "\n"
        files[API_DIR / f"{workflow.name}.json"] = json.dumps(to_api(workflow), indent=2) + "\n"
    return files


# ------------------------------------------------------------------------------------------
# Thumbnails
# ------------------------------------------------------------------------------------------

THUMBNAIL_SIZE = 512  # the template browser shows a square card
THUMBNAIL_FORMAT = 1  # raise when the picture's composition changes: every stamp goes stale
STAMP_PREFIX = "paint-by-example template thumbnail "


def thumbnail_path(workflow: Workflow) -> Path:
    return HERE / f"{workflow.name}.jpg"


@functools.cache
def _shared_sources_digest() -> str:
    """Hash of what every template runs on: the model and the example inputs (read once)."""
    digest = hashlib.sha256(MODEL_FILE.read_bytes())
    for path in sorted(EXAMPLE_INPUTS.glob("*.png")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def thumbnail_stamp(workflow: Workflow) -> str:
    """Hash of what the thumbnail is made from: the template as run (its API twin), the model
    and the example inputs, and the composition's format."""
    digest = hashlib.sha256(f"format {THUMBNAIL_FORMAT}\n".encode())
    digest.update(json.dumps(to_api(workflow), sort_keys=True).encode())
    digest.update(_shared_sources_digest().encode())
    return digest.hexdigest()


def read_stamp(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            comment = image.info.get("comment", b"")
    except OSError:
        return None
    text = comment.decode(errors="replace") if isinstance(comment, bytes) else str(comment)
    return text[len(STAMP_PREFIX) :] if text.startswith(STAMP_PREFIX) else None


TILE_LABEL = 30  # label band above each picture


def tile_cell(index: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of tile ``index``'s picture area in the 2x2 thumbnail."""
    half = THUMBNAIL_SIZE // 2
    x0, y0 = (index % 2) * half, (index // 2) * half
    return x0, y0 + TILE_LABEL, x0 + half, y0 + half


def compose_thumbnail(workflow: Workflow, saved: dict[str, list[Path]]):
    """The 2x2 picture of ``workflow.thumbnail``'s tiles; ``saved``: SaveImage title -> files."""
    from PIL import Image, ImageDraw, ImageFont

    sheet = Image.new("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=20)
    small = ImageFont.load_default(size=17)
    for index, tile in enumerate(workflow.thumbnail):
        left, top, right, bottom = tile_cell(index)
        label_at = ((left + right) // 2, top - TILE_LABEL + 6)
        draw.text(label_at, tile.label, fill=(230, 230, 230), font=font, anchor="mt")
        if tile.text is not None:
            draw.multiline_text(
                (left + 12, top + 8), tile.text, fill=(230, 200, 120), font=small, spacing=6
            )
            continue
        if tile.input is not None:
            path = EXAMPLE_INPUTS / tile.input
        else:
            files = saved.get(tile.save or "", [])
            if len(files) <= tile.index:
                raise RuntimeError(
                    f"{workflow.name}: no image {tile.index} from the node titled {tile.save!r} "
                    f"(it saved {len(files)})"
                )
            path = files[tile.index]
        with Image.open(path) as image:
            picture = _on_checkerboard(image) if "A" in image.getbands() else image.convert("RGB")
        room = min(right - left, bottom - top) - 8
        scale = room / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.NEAREST)
        sheet.paste(picture, (left + (right - left - size[0]) // 2, top + 4))
    return sheet


def _on_checkerboard(image):
    """A picture with transparency as image editors show it: over a grey checkerboard."""
    from PIL import Image

    rgba = image.convert("RGBA")
    board = Image.new("RGBA", rgba.size, (200, 200, 200, 255))
    square = max(1, min(rgba.size) // 8)
    dark = Image.new("RGBA", (square, square), (150, 150, 150, 255))
    for y in range(0, rgba.height, square):
        for x in range((y // square) % 2 * square, rgba.width, 2 * square):
            board.paste(dark, (x, y))
    return Image.alpha_composite(board, rgba).convert("RGB")


def write_thumbnail(workflow: Workflow, saved: dict[str, list[Path]]) -> Path:
    path = thumbnail_path(workflow)
    comment = (STAMP_PREFIX + thumbnail_stamp(workflow)).encode()
    compose_thumbnail(workflow, saved).save(path, "JPEG", quality=90, comment=comment)
    return path


def run_template(workflow: Workflow, server: str, out: Path) -> dict[str, list[Path]]:
    """Run the template's API twin as it is (its own example inputs and model) on a ComfyUI
    server; returns SaveImage title -> the downloaded images, in order."""
    from exemplar_core.headless import RunOptions, run_outputs

    options = RunOptions(
        workflow=API_DIR / f"{workflow.name}.json", server=server, out=out, quiet=True
    )
    saved: dict[str, list[Path]] = {}
    for item in run_outputs(options):
        saved.setdefault(item.title, []).append(item.path)
    return saved


def make_thumbnails(server: str | None) -> list[Path]:
    """Run every template and write its thumbnail; starts a ComfyUI (COMFYUI_PATH) with the
    pack installed as a user would when ``server`` is None. A template whose thumbnail shows no
    result (it needs model files the pack does not ship) is not run."""
    with tempfile.TemporaryDirectory(prefix="pbe-thumbnails-") as scratch:
        running = None
        if server is None:
            if not os.environ.get("COMFYUI_PATH"):
                raise SystemExit(
                    "error: --thumbnails runs the templates in ComfyUI: set COMFYUI_PATH to a "
                    "ComfyUI checkout, or pass --server URL of a running one with this pack"
                )
            sys.path.insert(0, str(REPO / "tests" / "host"))
            import pbe_host

            running = pbe_host.start_user_install(Path(scratch) / "comfy")
            server = running.url
        try:
            written = []
            for workflow in WORKFLOWS:
                saved = {}
                if workflow.runs_for_thumbnail:
                    saved = run_template(workflow, server, Path(scratch) / workflow.name)
                written.append(write_thumbnail(workflow, saved))
            return written
        finally:
            if running is not None:
                running.stop()


def stale_thumbnails() -> list[str]:
    problems = []
    for workflow in WORKFLOWS:
        path = thumbnail_path(workflow)
        stamp = read_stamp(path) if path.exists() else None
        if stamp is None:
            problems.append(f"{path.name}: missing, or not made by this generator")
        elif stamp != thumbnail_stamp(workflow):
            problems.append(f"{path.name}: made from another template, model or example inputs")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files")
    parser.add_argument(
        "--thumbnails", action="store_true", help="run every template in ComfyUI and write its .jpg"
    )
    parser.add_argument(
        "--server", help="with --thumbnails: a running ComfyUI with this pack (default: start one)"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in render_all().items():
        current = path.read_text() if path.exists() else None
        if current != text:
            stale.append(str(path))
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if args.thumbnails and not args.check:
        for path in make_thumbnails(args.server):
            print(f"wrote {path}")
    problems = stale_thumbnails()
    if args.check and (stale or problems):
        if stale:
            print("out of date (run python workflows/build.py):", *stale, sep="\n  ")
        if problems:
            print(
                "stale thumbnails (run python workflows/build.py --thumbnails):",
                *problems,
                sep="\n  ",
            )
        return 1
    if problems:
        print("note: stale thumbnails (run with --thumbnails):", *problems, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
