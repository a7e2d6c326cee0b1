"""A miniature world: synthetic scenes of shapes with box annotations (trainer JSONL format).

Scenes are drawn from a seed alone, so a split is reproducible bit for bit. Train and test scenes
use disjoint seed streams (and the writer checks that no scene repeats across splits).

    python -m train.synthetic --out data/synthetic --train 2000 --test 100 --size 128 --seed 0

writes ``train/NNNNNN.png`` + ``train.jsonl`` and ``test/...`` + ``test.jsonl`` (one line per image:
``{"image": "train/000000.png", "boxes": [[x0, y0, x1, y1], ...], "objects": [...]}``), plus
``eval/`` edit cases (source, mask, exemplar, the object's description) for the quality
benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from exemplar_core.files import atomic_write_text

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "ellipse")
TEXTURES = ("solid", "stripes", "checker", "dots")
BACKGROUNDS = ("plain", "gradient", "noise", "stripes")
PALETTE = {
    "red": (220, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (235, 215, 40),
    "green": (40, 170, 60),
    "cyan": (30, 190, 200),
    "blue": (40, 70, 210),
    "purple": (140, 50, 190),
    "pink": (235, 110, 180),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}


@dataclass(frozen=True)
class ObjectSpec:
    """One object: what it is and where (box end-exclusive, in scene pixels)."""

    shape: str
    color: str
    texture: str
    box: tuple[int, int, int, int]
    angle: float

    @property
    def rgb(self) -> tuple[int, int, int]:
        return PALETTE[self.color]


@dataclass(frozen=True)
class Kind:
    """What an object is, without where: one shape-colour-texture combination."""

    shape: str
    color: str
    texture: str

    def __post_init__(self) -> None:
        for value, choices, what in (
            (self.shape, SHAPES, "shape"),
            (self.color, tuple(PALETTE), "colour"),
            (self.texture, TEXTURES, "texture"),
        ):
            if value not in choices:
                raise ValueError(f"unknown {what} {value!r}; choose one of {list(choices)}")

    @classmethod
    def parse(cls, text: str) -> Kind:
        """'shape,colour,texture', e.g. 'star,pink,dots'."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3:
            raise ValueError(
                f"expected 'shape,colour,texture' (e.g. 'star,pink,dots'), got {text!r}"
            )
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.shape},{self.color},{self.texture}"

    def of(self, spec: ObjectSpec) -> bool:
        """Whether ``spec`` is an object of this kind."""
        return (spec.shape, spec.color, spec.texture) == (self.shape, self.color, self.texture)


def _secondary(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A darker or lighter version of the colour, for textures (same hue, clearly visible)."""
    lum = sum(rgb) / 3
    factor = 0.55 if lum > 110 else 1.9
    return tuple(max(0, min(255, int(c * factor + (0 if factor < 1 else 30)))) for c in rgb)


def _shape_polygon(
    shape: str, box: tuple[int, int, int, int], angle: float
) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = (x1 - x0) / 2, (y1 - y0) / 2
    if shape in ("circle", "ring"):
        pts = [(math.cos(t), math.sin(t)) for t in (2 * math.pi * i / 48 for i in range(48))]
    elif shape == "ellipse":
        pts = [(math.cos(t), 0.6 * math.sin(t)) for t in (2 * math.pi * i / 48 for i in range(48))]
    elif shape == "square":
        pts = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif shape == "diamond":
        pts = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    elif shape == "triangle":
        pts = [(0, -1), (0.95, 0.8), (-0.95, 0.8)]
    elif shape == "star":
        pts = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.45
            t = -math.pi / 2 + i * math.pi / 5
            pts.append((r * math.cos(t), r * math.sin(t)))
    elif shape == "cross":
        a, b = 0.3, 0.95
        pts = [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + rx * (px * cos - py * sin), cy + ry * (px * sin + py * cos)) for px, py in pts]


def _texture(size: tuple[int, int], texture: str, rgb, rng: random.Random) -> Image.Image:
    w, h = size
    layer = Image.new("RGB", size, rgb)
    if texture == "solid":
        return layer
    draw = ImageDraw.Draw(layer)
    other = _secondary(rgb)
    period = rng.randint(4, 8)
    if texture == "stripes":
        for x in range(-h, w + h, period * 2):
            draw.polygon([(x, 0), (x + period, 0), (x + period + h, h), (x + h, h)], fill=other)
    elif texture == "checker":
        for y in range(0, h, period):
            for x in range(0, w, period):
                if (x // period + y // period) % 2:
                    draw.rectangle([x, y, x + period - 1, y + period - 1], fill=other)
    elif texture == "dots":
        for y in range(period // 2, h, period * 2):
            for x in range(period // 2, w, period * 2):
                draw.ellipse([x, y, x + period, y + period], fill=other)
    else:
        raise ValueError(f"unknown texture {texture!r}; choose one of {TEXTURES}")
    return layer


def _background(size: int, rng: random.Random) -> Image.Image:
    kind = rng.choice(BACKGROUNDS)
    base = tuple(rng.randint(60, 200) for _ in range(3))
    image = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(image)
    if kind == "gradient":
        end = tuple(rng.randint(40, 220) for _ in range(3))
        for y in range(size):
            t = y / max(size - 1, 1)
            draw.line(
                [(0, y), (size, y)],
                fill=tuple(int(a + (b - a) * t) for a, b in zip(base, end, strict=True)),
            )
    elif kind == "noise":
        noise = Image.effect_noise((size, size), rng.uniform(10, 30)).convert("RGB")
        image = Image.blend(image, noise, 0.25)
    elif kind == "stripes":
        other = tuple(max(0, c - 25) for c in base)
        period = rng.randint(8, 20)
        for x in range(0, size, period * 2):
            draw.rectangle([x, 0, x + period - 1, size], fill=other)
    return image


def object_mask(size: tuple[int, int], spec: ObjectSpec) -> Image.Image:
    """The object's silhouette on a canvas of ``size``: 255 inside, 0 outside (a ring's hole
    too). ``draw_object`` pastes through it, softened by a 0.6 px blur."""
    x0, y0, x1, y1 = spec.box
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(_shape_polygon(spec.shape, spec.box, spec.angle), fill=255)
    if spec.shape == "ring":
        inner = (
            x0 + (x1 - x0) * 0.3,
            y0 + (y1 - y0) * 0.3,
            x1 - (x1 - x0) * 0.3,
            y1 - (y1 - y0) * 0.3,
        )
        draw.ellipse(inner, fill=0)
    return mask


def draw_object(canvas: Image.Image, spec: ObjectSpec, rng: random.Random) -> Image.Image:
    """Paint one object onto ``canvas`` in place; returns its silhouette (``object_mask``)."""
    mask = object_mask(canvas.size, spec)
    layer = _texture(canvas.size, spec.texture, spec.rgb, rng)
    canvas.paste(layer, (0, 0), mask.filter(ImageFilter.GaussianBlur(0.6)))
    return mask


def tight_box(canvas_size: int, spec: ObjectSpec) -> tuple[int, int, int, int]:
    """The object's drawn extent (end-exclusive), clipped to the canvas."""
    bbox = object_mask((canvas_size, canvas_size), spec).getbbox()  # a ring's hole is inside
    return bbox if bbox else spec.box


def random_object(rng: random.Random, size: int, min_frac: float = 0.2, max_frac: float = 0.55):
    side = rng.uniform(min_frac, max_frac) * size
    aspect = rng.uniform(0.75, 1.33)
    w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
    x0 = rng.uniform(0, size - w)
    y0 = rng.uniform(0, size - h)
    return ObjectSpec(
        shape=rng.choice(SHAPES),
        color=rng.choice(list(PALETTE)),
        texture=rng.choice(TEXTURES),
        box=(int(x0), int(y0), int(x0 + w), int(y0 + h)),
        angle=rng.uniform(-0.6, 0.6),
    )


def scene_seed(split: str, index: int, seed: int) -> int:
    """Disjoint streams for each split: the split name is part of the hash."""
    digest = hashlib.sha256(f"{split}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_scene(
    split: str, index: int, seed: int = 0, size: int = 128
) -> tuple[Image.Image, list[ObjectSpec]]:
    """One scene: a background with 1-3 non-overlapping objects (boxes are tight)."""
    rng = random.Random(scene_seed(split, index, seed))
    canvas = _background(size, rng)
    objects: list[ObjectSpec] = []
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(20):
            spec = random_object(rng, size)
            if all(_iou_overlap(spec.box, o.box) == 0 for o in objects):
                break
        else:
            continue
        draw_object(canvas, spec, rng)
        objects.append(
            ObjectSpec(spec.shape, spec.color, spec.texture, tight_box(size, spec), spec.angle)
        )
    return canvas, objects


def make_kind_scene(
    kind: Kind, split: str, index: int, seed: int = 0, size: int = 128
) -> tuple[Image.Image, list[ObjectSpec]]:
    """A scene with one object of ``kind`` (first in the list, boxes tight) and 0-2 other,
    non-overlapping objects of other kinds: the subject experiment's training scenes."""
    rng = random.Random(scene_seed(split, index, seed))
    canvas = _background(size, rng)
    first = random_object(rng, size, 0.3, 0.55)
    objects: list[ObjectSpec] = []
    for spec in [ObjectSpec(kind.shape, kind.color, kind.texture, first.box, first.angle)] + [
        random_object(rng, size) for _ in range(rng.randint(0, 2))
    ]:
        if objects and (kind.of(spec) or any(_iou_overlap(spec.box, o.box) for o in objects)):
            continue
        draw_object(canvas, spec, rng)
        objects.append(
            ObjectSpec(spec.shape, spec.color, spec.texture, tight_box(size, spec), spec.angle)
        )
    return canvas, objects


def _iou_overlap(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return float(ix * iy)


def make_exemplar(spec: ObjectSpec, rng: random.Random, size: int = 96) -> Image.Image:
    """The same kind of object (shape, colour, texture) on a plain light background, re-posed."""
    return make_exemplar_with_mask(spec, rng, size)[0]


def make_exemplar_with_mask(
    spec: ObjectSpec, rng: random.Random, size: int = 96
) -> tuple[Image.Image, Image.Image]:
    """``make_exemplar`` and the object's silhouette in it (L, 255 inside)."""
    canvas = Image.new("RGB", (size, size), (235, 235, 235))
    margin = int(size * rng.uniform(0.08, 0.18))
    box = (margin, margin, size - margin, size - margin)
    mask = draw_object(
        canvas, ObjectSpec(spec.shape, spec.color, spec.texture, box, rng.uniform(-0.6, 0.6)), rng
    )
    return canvas, mask


def make_eval_case(
    index: int, seed: int = 0, size: int = 128, split: str = "eval", kind: Kind | None = None
) -> dict:
    """A held-out edit: a scene, a box mask, and an exemplar of another (new) object, of
    ``kind`` when given (the subject experiment's cases; ``split`` names their seed stream)."""
    rng = random.Random(scene_seed(split, index, seed))
    canvas, objects = make_scene(split, index, seed, size)
    target = random_object(rng, size, 0.3, 0.5)
    if kind is not None:
        target = ObjectSpec(kind.shape, kind.color, kind.texture, target.box, target.angle)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(
        [target.box[0], target.box[1], target.box[2] - 1, target.box[3] - 1], fill=255
    )
    exemplar, exemplar_mask = make_exemplar_with_mask(target, rng)
    return {
        "source": canvas,
        "mask": mask,
        "exemplar": exemplar,
        "exemplar_mask": exemplar_mask,  # the exemplar's object pixels (the fidelity reference)
        "object": asdict(target),
        "box": list(target.box),
    }


def write_split(out: Path, split: str, count: int, seed: int, size: int) -> set[str]:
    """Write ``count`` scenes of ``split``; returns their image hashes (to check disjointness)."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    hashes: set[str] = set()
    lines = []
    for i in range(count):
        image, objects = make_scene(split, i, seed, size)
        rel = f"{split}/{i:06d}.png"
        image.save(out / rel)
        hashes.add(hashlib.sha256(image.tobytes()).hexdigest())
        lines.append(
            json.dumps(
                {
                    "image": rel,
                    "boxes": [list(o.box) for o in objects],
                    "objects": [
                        {"shape": o.shape, "color": o.color, "texture": o.texture} for o in objects
                    ],
                }
            )
        )
    # The index last and whole: it names only images already written.
    atomic_write_text(out / f"{split}.jsonl", "\n".join(lines) + "\n")
    return hashes


def write_eval(out: Path, count: int, seed: int, size: int) -> None:
    folder = out / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(count):
        case = make_eval_case(i, seed, size)
        for key in ("source", "mask", "exemplar", "exemplar_mask"):
            case[key].save(folder / f"{i:04d}_{key}.png")
        cases.append({"id": i, "object": case["object"], "box": case["box"]})
    atomic_write_text(out / "eval.json", json.dumps(cases, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.synthetic", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", required=True, help="output folder (must be empty or new)")
    p.add_argument("--train", type=int, default=2000, help="training scenes (2000)")
    p.add_argument("--test", type=int, default=100, help="test scenes (100)")
    p.add_argument("--eval", type=int, default=32, help="held-out edit cases (32)")
    p.add_argument("--size", type=int, default=128, help="scene side in px (128)")
    p.add_argument("--seed", type=int, default=0, help="world seed (0)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        p.error(f"{out} is not empty; choose a new folder so no files are replaced")
    train = write_split(out, "train", args.train, args.seed, args.size)
    test = write_split(out, "test", args.test, args.seed, args.size)
    shared = train & test
    if shared:
        raise SystemExit(f"error: {len(shared)} scenes appear in both splits")
    write_eval(out, args.eval, args.seed, args.size)
    print(f"wrote {args.train} train, {args.test} test scenes and {args.eval} eval cases to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
