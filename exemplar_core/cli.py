"""``python -m exemplar_core``: edit, convert, info (plain PyTorch, no ComfyUI needed)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2


def _dtype(name: str):
    import torch

    return {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        name
    ]


def add_edit_command(subparsers: argparse._SubParsersAction) -> None:
    from .editor import SCHEDULERS, EditSettings

    d = EditSettings()
    p = subparsers.add_parser(
        "edit",
        help="repaint the masked area of a source image with the exemplar's object",
        description=(
            "Repaint the white area of MASK in SOURCE so that it shows the object of EXEMPLAR. "
            "By default only a window around the mask is processed at --size and stitched back "
            "with a feathered blend: everything outside the feather band stays the source."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="any Paint-by-Example checkpoint format")
    p.add_argument("--source", required=True, help="the image to edit (any size)")
    p.add_argument("--mask", required=True, help="white = repaint; same size as the source")
    p.add_argument("--exemplar", required=True, help="image of the object to paint in")
    p.add_argument("--exemplar-mask", help="optional: white = the object in the exemplar")
    p.add_argument("--out", required=True, help="output image (.png, .jpg or .webp)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"denoising steps ({d.steps})")
    p.add_argument("--scale", type=float, default=d.scale, help=f"similarity scale s ({d.scale})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed ({d.seed})")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler, help="sampler")
    p.add_argument(
        "--size",
        type=int,
        default=d.size,
        help="processing resolution (default: the model's own, 512 for the published model)",
    )
    p.add_argument(
        "--context-margin",
        type=float,
        default=d.context_margin,
        help=f"context around the mask, times its box's longer side ({d.context_margin})",
    )
    p.add_argument("--feather", type=int, default=d.feather, help=f"blend band in px ({d.feather})")
    p.add_argument("--color-match", action="store_true", help="match colours to the source")
    p.add_argument(
        "--no-paste-back", action="store_true", help="write the raw decoded window instead"
    )
    p.add_argument(
        "--whole-image",
        action="store_true",
        help="resize the whole image (sides to multiples of 64) instead of cropping",
    )
    p.add_argument(
        "--mask-resize",
        choices=("bilinear", "nearest"),
        default=d.mask_resize,
        help="latent-size mask: bilinear as the official code (default), nearest as diffusers",
    )
    p.add_argument(
        "--exemplar-resize",
        choices=("squash", "center_crop"),
        default=d.exemplar_resize,
        help="squash to the encoder size as the official code (default), or centre-crop",
    )
    p.add_argument(
        "--resize-mask",
        action="store_true",
        help="stretch a mask of another size to the source's size instead of failing",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run_edit)


def run_edit(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from .editor import Editor, EditSettings
    from .image_io import ImageError, load_mask, load_rgb, save_rgb

    out = Path(args.out)
    inputs = {Path(p).resolve() for p in (args.source, args.mask, args.exemplar) if p}
    if out.resolve() in inputs:
        raise ImageError(f"--out {out} is one of the inputs; choose another file")
    if out.exists() and not args.overwrite:
        raise ImageError(f"{out} already exists; choose another path or pass --overwrite")
    source = load_rgb(args.source, "source")
    mask = load_mask(args.mask, "mask")
    exemplar = load_rgb(args.exemplar, "exemplar")
    exemplar_mask = (
        load_mask(args.exemplar_mask, "exemplar mask")[0, 0] if args.exemplar_mask else None
    )
    if mask.shape[-2:] != source.shape[-2:] and args.resize_mask:
        mask = F.interpolate(mask, size=source.shape[-2:], mode="bilinear", align_corners=False)
    settings = EditSettings.from_options(
        steps=args.steps,
        scale=args.scale,
        seed=args.seed,
        scheduler=args.scheduler,
        size=args.size,
        paste_back=not args.no_paste_back,
        whole_image=args.whole_image,
        context_margin=args.context_margin,
        feather=args.feather,
        color_match=args.color_match,
        mask_resize=args.mask_resize,
        exemplar_resize=args.exemplar_resize,
    )
    device = None if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    start = time.perf_counter()
    editor = Editor.from_file(args.checkpoint, device=device, dtype=_dtype(args.dtype))
    loaded = time.perf_counter()
    result = editor.edit(source, mask, exemplar, settings, exemplar_mask=exemplar_mask)
    done = time.perf_counter()
    save_rgb(result.image, out, overwrite=args.overwrite)
    region = result.region
    where = (
        "nothing (empty mask)"
        if region is None
        else (
            f"window {region.x1 - region.x0}x{region.y1 - region.y0} at "
            f"({region.x0}, {region.y0}), processed at {region.width}x{region.height}"
        )
    )
    print(
        f"wrote {out} ({result.image.shape[-1]}x{result.image.shape[-2]}); edited {where}; "
        f"load {loaded - start:.1f}s, edit {done - loaded:.1f}s on {editor.device}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exemplar_core",
        description="Paint-by-Example without ComfyUI: edit, convert and inspect checkpoints",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_edit_command(sub)
    from . import convert
    from .demo import add_demo_command

    convert.register(sub)
    add_demo_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        # Every error class of ours is a ValueError carrying a message written for the user.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
