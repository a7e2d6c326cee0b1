"""``python -m exemplar_core demo``: a real edit out of the box with the embedded default model.

The embedded model (``models/pbe-mini.safetensors``) is the miniature world's model: the published
architecture family at 64 px, trained by this project's own trainer on synthetic shapes
(docs/miniature-world.md). It runs the same code paths as the real model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .checks import SIMILARITY_MAX, check_number

PACK_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PACK_ROOT / "models" / "pbe-mini.safetensors"
EXAMPLES = PACK_ROOT / "example_inputs"
DEFAULT_SCALES = (0.0, 1.0, 3.0, 5.0, 7.0)
TILE = 160


def add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run an edit with the embedded default model and write a contact sheet",
        description=(
            "Edit the bundled example (source, mask, exemplar) with the embedded miniature model "
            "at several similarity scales; write result.png and contact_sheet.png "
            "(source | mask | exemplar | results). Needs no download."
        ),
    )
    p.add_argument(
        "--out",
        default="out/demo",
        help="output folder; a fresh one (NAME-2, NAME-3, ...) is picked if it already holds a "
        "demo, nothing is overwritten (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint",
        default=str(DEFAULT_MODEL),
        help="model file (default: the embedded miniature model, models/pbe-mini.safetensors)",
    )
    p.add_argument(
        "--source",
        default=str(EXAMPLES / "source.png"),
        help="image to edit (default: the bundled example_inputs/source.png)",
    )
    p.add_argument(
        "--mask",
        default=str(EXAMPLES / "mask.png"),
        help="white = repaint, the source's size (default: the bundled example_inputs/mask.png)",
    )
    p.add_argument(
        "--exemplar",
        default=str(EXAMPLES / "exemplar.png"),
        help="image of the object to paint in (default: the bundled example_inputs/exemplar.png)",
    )
    p.add_argument(
        "--scales",
        type=scale_list,
        default=DEFAULT_SCALES,
        help="comma-separated similarity scales for the contact sheet (default: "
        f"{','.join(f'{s:g}' for s in DEFAULT_SCALES)})",
    )
    p.add_argument(
        "--result-scale",
        type=float,
        default=5.0,
        help="similarity scale of result.png (default: %(default)g)",
    )
    p.add_argument(
        "--steps", type=int, default=20, help="DDIM steps per edit (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(func=run_demo)


def scale_list(text: str) -> tuple[float, ...]:
    """argparse type: ``"0,1,3"`` -> (0.0, 1.0, 3.0)."""
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,1,3,5; got {text!r}"
        ) from None
    return scales


def fresh_folder(path: Path) -> Path:
    """``path`` if it holds no demo output yet, else ``path-2``, ``path-3``, ..."""
    candidate, n = path, 1
    while (candidate / "result.png").exists() or (candidate / "contact_sheet.png").exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def contact_sheet(tiles: list[tuple[str, torch.Tensor]], tile: int = TILE):
    """[(label, image [1, 3, H, W] 0..1)] -> one PIL image, tiles side by side with labels."""
    from PIL import Image, ImageDraw

    from .image_io import to_uint8

    label_h = 18
    sheet = Image.new("RGB", (tile * len(tiles), tile + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(tiles):
        picture = Image.fromarray(to_uint8(image))
        scale = tile / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.NEAREST if scale >= 2 else Image.BICUBIC)
        sheet.paste(picture, (i * tile + (tile - size[0]) // 2, label_h + (tile - size[1]) // 2))
        draw.text((i * tile + 4, 3), label, fill="black")
    return sheet


def run_demo(args: argparse.Namespace) -> int:
    from .editor import Editor, EditSettings, check_mask_size
    from .files import check_out_folder
    from .image_io import load_mask, load_rgb, save_image, save_rgb

    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(
            f"{checkpoint} not found: the embedded model ships in the repository's models/ "
            f"folder (git clone the whole pack), or pass --checkpoint"
        )
    check_out_folder(args.out)  # before the model is loaded
    scales = list(args.scales)
    for scale in scales:
        check_number(scale, "--scales", 0.0, SIMILARITY_MAX)
    check_number(args.result_scale, "--result-scale", 0.0, SIMILARITY_MAX)
    settings = {
        scale: EditSettings.from_options(
            {"similarity": "--scales"},
            steps=args.steps,
            similarity=scale,
            seed=args.seed,
            scheduler="ddim",
            feather=4,
        )
        for scale in sorted(set(scales) | {args.result_scale})
    }
    started = time.perf_counter()
    source = load_rgb(args.source, "source")
    mask = load_mask(args.mask, "mask")
    exemplar = load_rgb(args.exemplar, "exemplar")
    check_mask_size(source, mask, hint="")  # before the model is loaded
    editor = Editor.from_file(checkpoint, device="cpu")
    results = {scale: editor.edit(source, mask, exemplar, s).image for scale, s in settings.items()}
    out = fresh_folder(Path(args.out))
    save_rgb(results[args.result_scale], out / "result.png")
    tiles = [("source", source), ("mask", mask.expand(-1, 3, -1, -1)), ("exemplar", exemplar)]
    tiles += [(f"s = {s:g}", results[s]) for s in scales]
    save_image(contact_sheet(tiles), out / "contact_sheet.png")
    seconds = time.perf_counter() - started
    print(
        f"wrote {out / 'result.png'} (s = {args.result_scale:g}) and "
        f"{out / 'contact_sheet.png'} in {seconds:.1f} s"
    )
    return 0
