"""Generate the workflow templates (UI format) and their API-format twins from one source.

    python workflows/build.py          # write workflows/*.json and workflows/api/*.json
    python workflows/build.py --check  # exit 1 if the files on disk differ from the source

The source is ``WORKFLOWS`` below: nodes with named inputs (literal widget values or links).
``NODE_SPECS`` gives each node type's input order, socket types and outputs, which the UI format
needs (its ``widgets_values`` are positional); the host tests check it against ComfyUI's
``/object_info``. Runs without ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
API_DIR = HERE / "api"
DEFAULT_MODEL = "pbe-mini.safetensors"  # the embedded model: templates run on install


@dataclass(frozen=True)
class Spec:
    """A node type as the UI format needs it.

    inputs: (name, type) in ComfyUI's input order; a type in WIDGET_TYPES (or "COMBO") is a
    widget, anything else a socket. seeded: widget names followed by a control_after_generate
    value. outputs: (name, type). upload: image loaders carry an extra "image" upload widget value.
    """

    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...] = ()
    seeded: tuple[str, ...] = ()
    upload: bool = False


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

NODE_SPECS: dict[str, Spec] = {
    "LoadImage": Spec(
        inputs=(("image", "COMBO"),), outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK")), upload=True
    ),
    "LoadImageMask": Spec(
        inputs=(("image", "COMBO"), ("channel", "COMBO")),
        outputs=(("MASK", "MASK"),),
        upload=True,
    ),
    "SaveImage": Spec(inputs=(("images", "IMAGE"), ("filename_prefix", "STRING"))),
    "MaskToImage": Spec(inputs=(("mask", "MASK"),), outputs=(("IMAGE", "IMAGE"),)),
    "ImageBatch": Spec(
        inputs=(("image1", "IMAGE"), ("image2", "IMAGE")), outputs=(("IMAGE", "IMAGE"),)
    ),
    "VAEDecode": Spec(
        inputs=(("samples", "LATENT"), ("vae", "VAE")), outputs=(("IMAGE", "IMAGE"),)
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
    ),
    "PaintByExample.Loader": Spec(
        inputs=(("model_name", "COMBO"), ("weight_dtype", "COMBO")),
        outputs=(("MODEL", "MODEL"), ("VAE", "VAE"), ("PBE_ENCODER", "PBE_ENCODER")),
    ),
    "PaintByExample.ExemplarEncode": Spec(
        inputs=(
            ("encoder", "PBE_ENCODER"),
            ("exemplar", "IMAGE"),
            ("combine", "COMBO"),
            ("resize", "COMBO"),
            ("background_fill", "FLOAT"),
            ("exemplar_mask", "MASK"),
        ),
        outputs=(("positive", "CONDITIONING"), ("negative", "CONDITIONING")),
    ),
    "PaintByExample.MaskBezierJitter": Spec(
        inputs=(("mask", "MASK"), ("seed", "INT"), ("jitter", "INT"), ("box_expansion", "FLOAT")),
        outputs=(("mask", "MASK"),),
        seeded=("seed",),
    ),
    "PaintByExample.InpaintSampler": Spec(
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
        ),
        outputs=(("IMAGE", "IMAGE"), ("LATENT", "LATENT")),
        seeded=("seed",),
    ),
    "PaintByExample.SimilarityGuidance": Spec(
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
    pos: tuple[int, int] = (0, 0)


@dataclass
class Workflow:
    name: str
    description: str
    nodes: list[Node] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# The single source
# ------------------------------------------------------------------------------------------


def _loaders(x: int = 0) -> list[Node]:
    return [
        Node(
            1,
            "PaintByExample.Loader",
            "loader",
            {"model_name": DEFAULT_MODEL, "weight_dtype": "default"},
            (x, 0),
        ),
        Node(2, "LoadImage", "source", {"image": "pbe_example_source.png"}, (x, 260)),
        Node(
            3,
            "LoadImageMask",
            "mask",
            {"image": "pbe_example_mask.png", "channel": "red"},
            (x, 620),
        ),
        Node(4, "LoadImage", "exemplar", {"image": "pbe_example_exemplar.png"}, (x, 860)),
        Node(
            5,
            "PaintByExample.ExemplarEncode",
            "encode",
            {
                "encoder": Link(1, 2),
                "exemplar": Link(4, 0),
                "combine": "one per exemplar",
                "resize": "squash",
                "background_fill": 1.0,
            },
            (x + 380, 700),
        ),
    ]


def _sampler(
    node_id: int, title: str, model: Link, mask: Link, similarity: float, pos: tuple[int, int]
) -> Node:
    return Node(
        node_id,
        "PaintByExample.InpaintSampler",
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
        },
        pos,
    )


def _save(node_id: int, title: str, images: Link, prefix: str, pos: tuple[int, int]) -> Node:
    return Node(node_id, "SaveImage", title, {"images": images, "filename_prefix": prefix}, pos)


WORKFLOWS: list[Workflow] = [
    Workflow(
        "basic_exemplar_edit",
        "Paint the exemplar into the masked area with the Paint-by-Example sampler.",
        _loaders()
        + [
            _sampler(6, "sampler", Link(1, 0), Link(3, 0), 5.0, (800, 200)),
            _save(7, "save", Link(6, 0), "pbe_edit", (1200, 200)),
        ],
    ),
    Workflow(
        "stock_ksampler_edit",
        "The same edit from stock nodes: InpaintModelConditioning + KSampler + VAEDecode.",
        _loaders()
        + [
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
                (800, 200),
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
                (1150, 200),
            ),
            Node(8, "VAEDecode", "decode", {"samples": Link(7, 0), "vae": Link(1, 1)}, (1500, 200)),
            _save(9, "save", Link(8, 0), "pbe_stock", (1750, 200)),
        ],
    ),
    Workflow(
        "similarity_sweep",
        "One edit at similarity 2, 5 and 9, plus a scheduled, rescaled Similarity Guidance.",
        _loaders()
        + [
            _sampler(6, "similarity 2", Link(1, 0), Link(3, 0), 2.0, (800, 0)),
            _sampler(7, "similarity 5", Link(1, 0), Link(3, 0), 5.0, (800, 420)),
            _sampler(8, "similarity 9", Link(1, 0), Link(3, 0), 9.0, (800, 840)),
            Node(
                9,
                "PaintByExample.SimilarityGuidance",
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
                (400, 1260),
            ),
            _sampler(10, "guided", Link(9, 0), Link(3, 0), 5.0, (800, 1260)),
            Node(
                11,
                "ImageBatch",
                "batch 2+5",
                {"image1": Link(6, 0), "image2": Link(7, 0)},
                (1200, 200),
            ),
            Node(
                12,
                "ImageBatch",
                "batch +9",
                {"image1": Link(11, 0), "image2": Link(8, 0)},
                (1200, 400),
            ),
            Node(
                13,
                "ImageBatch",
                "batch +guided",
                {"image1": Link(12, 0), "image2": Link(10, 0)},
                (1200, 600),
            ),
            _save(14, "save", Link(13, 0), "pbe_sweep", (1450, 400)),
        ],
    ),
    Workflow(
        "bezier_mask_demo",
        "Reshape the mask's box into the paper's Bezier shape, then edit with it.",
        _loaders()
        + [
            Node(
                6,
                "PaintByExample.MaskBezierJitter",
                "bezier",
                {
                    "mask": Link(3, 0),
                    "seed": 0,
                    "jitter": 5,
                    "box_expansion": 0.4,
                },
                (400, 620),
            ),
            _sampler(7, "sampler", Link(1, 0), Link(6, 0), 5.0, (800, 200)),
            _save(8, "save", Link(7, 0), "pbe_bezier_edit", (1200, 200)),
            Node(9, "MaskToImage", "mask preview", {"mask": Link(6, 0)}, (800, 700)),
            _save(10, "save mask", Link(9, 0), "pbe_bezier_mask", (1200, 700)),
        ],
    ),
]


# ------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------


def is_widget(kind: str) -> bool:
    return kind in WIDGET_TYPES


def to_api(workflow: Workflow) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    for node in workflow.nodes:
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
        ui_nodes.append(
            {
                "id": node.id,
                "type": node.class_type,
                "title": node.title,
                "pos": list(node.pos),
                "size": [320, 120],
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": inputs,
                "outputs": [],
                "properties": {"Node name for S&R": node.class_type},
                "widgets_values": widgets,
            }
        )
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
    return {
        "last_node_id": max(by_id),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"info": {"description": workflow.description}},
        "version": 0.4,
    }


def ui_to_api(ui: dict[str, Any]) -> dict[str, Any]:
    """Read a UI-format workflow back into API format (the agreement check of the tests)."""
    link_source = {link[0]: (link[1], link[2]) for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        spec = NODE_SPECS[node["type"]]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render_all().items():
        current = path.read_text() if path.exists() else None
        if current != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if args.check and stale:
        print("out of date (run python workflows/build.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
