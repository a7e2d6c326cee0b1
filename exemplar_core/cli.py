"""``python -m exemplar_core``: edit, convert, info, merge-lora, export-clip-vision, demo, headless,
batch (no ComfyUI needed).

Every command exits 0 on success, 2 on bad input (with a message naming the problem and what is
expected), 1 when a ComfyUI server refuses or fails a headless workflow.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2
log = logging.getLogger(__name__)


def dtype_named(name: str):
    """A --dtype choice -> the torch dtype, None for "auto" (the device decides)."""
    from .dtypes import DTYPES

    return None if name == "auto" else DTYPES[name]


class _RememberOption(argparse.Action):
    """Store the value and which of the option's names was typed (``args.options``), so that a
    message names the option the user wrote."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        typed = dict(getattr(namespace, "options", None) or {})
        typed[self.dest] = option_string
        namespace.options = typed


def add_compile_option(parser: argparse.ArgumentParser) -> None:
    """``--compile {off,compile,cudagraphs}``: how the UNet step runs (``exemplar_core.compile``);
    shared by every command that samples (edit, batch, the benchmarks)."""
    from .compile import COMPILE_MODES

    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="run the UNet step compiled: compile = torch.compile (inductor; the first step of "
        "each resolution and batch compiles, which takes seconds to minutes, so it pays over "
        "many steps or edits), cudagraphs = the same plus CUDA graphs (CUDA only); where it "
        "cannot, a warning says why and the edit runs uncompiled (default: %(default)s)",
    )


def add_edit_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "edit",
        help="repaint the masked area of a source image with the exemplar's object",
        description=(
            "Repaint the white area of MASK in SOURCE so that it shows the object of EXEMPLAR. "
            "By default only a window around the mask is processed at --size and stitched back "
            "with a feathered blend: everything outside the feather band stays the source. "
            "--out is checked before the model is loaded."
        ),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="the model: official .ckpt/.safetensors, a diffusers folder or this pack's single "
        "file (required)",
    )
    p.add_argument("--source", required=True, help="the image to edit, any size (required)")
    p.add_argument(
        "--mask",
        required=True,
        help="white = repaint; the source's size unless --resize-mask (required)",
    )
    p.add_argument(
        "--exemplar",
        required=True,
        help="image of the object to paint in, any size; a cut-out (transparent PNG) uses its "
        "alpha as the exemplar mask, opaque = the object (required)",
    )
    p.add_argument(
        "--exemplar-mask",
        help="white = the object in the exemplar; the rest is ignored; wins over the exemplar's "
        "alpha (default: none, the exemplar's alpha if it has one, else the whole exemplar)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output image, .png, .jpg or .webp; its folder is created if missing (required)",
    )
    p.add_argument(
        "--preview",
        metavar="FILE",
        help="also write a preview image, .png, .jpg or .webp: the processed window with the mask "
        "outlined (magenta on its edge, black just outside) and, framed in cyan, the exemplar "
        "as the encoder saw it; never replaces an existing file unless --overwrite (default: "
        "none)",
    )
    add_edit_options(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists (default: off, an existing --out is an error)",
    )
    p.set_defaults(func=run_edit)


def add_edit_options(p: argparse.ArgumentParser) -> None:
    """The edit settings (``EditSettings``, each option's default its default), --resize-mask,
    --device, --dtype and --lora, as ``edit`` and ``batch`` both take them;
    ``edit_settings_of(args)`` reads the settings back."""
    from typing import get_args

    from .checks import EXEMPLAR_EXPAND_MAX
    from .dtypes import DTYPES
    from .editor import SCHEDULERS, EditSettings
    from .preprocess import ResizeMode

    d = EditSettings()
    p.add_argument(
        "--steps", type=int, default=d.steps, help="denoising steps (default: %(default)s)"
    )
    p.add_argument(
        "--similarity",
        "--scale",  # the option's first name, kept for existing scripts
        type=float,
        default=d.similarity,
        action=_RememberOption,
        help="similarity scale s: how strongly the result follows the exemplar; 1 = no "
        "guidance (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=d.scheduler,
        help="sampler: pndm is the paper's PLMS (default: %(default)s)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=d.size,
        help="processing resolution in px, a multiple of 64 for the published model (default: the "
        "model's own, 512 for the published model)",
    )
    p.add_argument(
        "--context-margin",
        type=float,
        default=d.context_margin,
        help="context around the mask, times its box's longer side (default: %(default)s)",
    )
    p.add_argument(
        "--feather",
        type=int,
        default=d.feather,
        help="px over which the edit blends into the source (default: %(default)s)",
    )
    p.add_argument(
        "--mask-grow",
        type=int,
        default=d.mask_grow,
        help="px to grow the edit mask by before the window is planned, negative to shrink it; "
        "separate from --feather, which blends the result (default: %(default)s)",
    )
    p.add_argument(
        "--mask-blur",
        type=int,
        default=d.mask_blur,
        help="px radius of a blur of the edit mask, re-binarised at 0.5 after the grow: smooths "
        "its outline (default: %(default)s)",
    )
    p.add_argument(
        "--color-match",
        action="store_true",
        help="match the edit's colours to the source around it (default: off)",
    )
    p.add_argument(
        "--no-paste-back",
        action="store_true",
        help="write the processed window itself, at processing size (--size: 512x512 for the "
        "published model, not the source's size), instead of the whole source with the edited "
        "window stitched in (default: off, the source's size is written)",
    )
    p.add_argument(
        "--whole-image",
        action="store_true",
        help="process the whole image resized (sides to multiples of 64) instead of a window "
        "around the mask (default: off)",
    )
    p.add_argument(
        "--mask-resize",
        choices=("bilinear", "nearest"),
        default=d.mask_resize,
        help="how the mask is shrunk to latent size: bilinear as the official code, nearest as "
        "diffusers (default: %(default)s)",
    )
    p.add_argument(
        "--exemplar-resize",
        choices=get_args(ResizeMode),
        default=d.exemplar_resize,
        help="how the exemplar (its object's box, with an exemplar mask or alpha) fits the "
        "encoder's square: squash as the official code, centre-crop as diffusers, or "
        "pad_to_square (padded with white, the object keeps its aspect) (default: %(default)s)",
    )
    p.add_argument(
        "--exemplar-expand",
        type=float,
        default=d.exemplar_expand,
        metavar="R",
        help="grow the object's box (the whole exemplar without a mask) R times around its "
        f"centre before framing, 1 to {EXEMPLAR_EXPAND_MAX:g}; beyond the image is white "
        "(default: %(default)s, the tight box)",
    )
    p.add_argument(
        "--resize-mask",
        action="store_true",
        help="stretch a mask of another size to the source's size (default: off, a mask of "
        "another size is an error)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run; auto = cuda when torch sees a GPU, else cpu (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="weight and compute precision; auto = fp16 on cuda, fp32 on cpu (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:STRENGTH]",
        help="merge a Paint-by-Example LoRA .safetensors into the model before editing, at "
        "STRENGTH (a number, default 1; 0 = not applied); repeat to stack several (default: none)",
    )
    add_compile_option(p)


def edit_settings_of(args: argparse.Namespace) -> dict[str, object]:
    """The ``EditSettings`` fields that ``add_edit_options`` options give, by field name."""
    return {
        "steps": args.steps,
        "similarity": args.similarity,
        "seed": args.seed,
        "scheduler": args.scheduler,
        "size": args.size,
        "paste_back": not args.no_paste_back,
        "whole_image": args.whole_image,
        "context_margin": args.context_margin,
        "feather": args.feather,
        "mask_grow": args.mask_grow,
        "mask_blur": args.mask_blur,
        "color_match": args.color_match,
        "mask_resize": args.mask_resize,
        "exemplar_resize": args.exemplar_resize,
        "exemplar_expand": args.exemplar_expand,
    }


def run_edit(args: argparse.Namespace) -> int:
    from .editor import Editor, EditSettings
    from .files import DestinationError, check_destination, same_file
    from .image_io import check_output_name, load_exemplar, load_mask, load_rgb, save_rgb
    from .lora import parse_lora_argument

    # --out is checked before anything is loaded: a model load takes seconds to minutes.
    out = Path(args.out)
    lora_args = [parse_lora_argument(text, "--lora") for text in args.lora]
    inputs = [args.source, args.mask, args.exemplar, args.exemplar_mask, args.checkpoint]
    inputs += [path for path, _ in lora_args]
    check_destination(out, overwrite=args.overwrite, inputs=inputs, what="--out")
    check_output_name(out)
    preview = Path(args.preview) if args.preview else None
    if preview is not None:
        if same_file(preview, out):
            raise DestinationError(
                f"--preview {preview} is the --out file; write the preview to another file"
            )
        check_destination(preview, overwrite=args.overwrite, inputs=inputs, what="--preview")
        check_output_name(preview)
    loras = read_loras(lora_args)  # what needs no model fails before the model is loaded
    source = load_rgb(args.source, "source")
    mask = fit_mask(source, load_mask(args.mask, "mask"), args.resize_mask)
    exemplar, exemplar_mask = exemplar_mask_of(
        load_exemplar(args.exemplar, "exemplar"),
        load_mask(args.exemplar_mask, "exemplar mask") if args.exemplar_mask else None,
    )
    settings = EditSettings.from_options(getattr(args, "options", None), **edit_settings_of(args))
    device = device_named(args.device)
    start = time.perf_counter()
    editor = Editor.from_file(args.checkpoint, device=device, dtype=dtype_named(args.dtype))
    for lora, strength in loras:
        editor.apply_lora(lora, strength)
        print(f"applied LoRA {lora.path} at strength {strength:g}")
    editor.enable_compile(args.compile)
    loaded = time.perf_counter()
    result = editor.edit(source, mask, exemplar, settings, exemplar_mask=exemplar_mask)
    done = time.perf_counter()
    save_rgb(result.image, out, overwrite=args.overwrite)
    if preview is not None:
        save_rgb(result.preview, preview, overwrite=args.overwrite)
        print(f"wrote the preview {preview}")
    print(
        f"wrote {out} ({result.image.shape[-1]}x{result.image.shape[-2]}): "
        f"{_what_was_written(result.region, settings.paste_back)}; "
        f"load {loaded - start:.1f}s, edit {done - loaded:.1f}s on {editor.device}"
    )
    return 0


def read_loras(lora_args):
    """[(LoRA file, strength)] as --lora gives them -> [(LoraFile, strength)], each read and its
    layout checked, so that what needs no model fails before the model is loaded."""
    from .lora import check_layout, read_lora

    loras = [(read_lora(path), strength) for path, strength in lora_args]
    for lora, _ in loras:
        check_layout(lora)
    return loras


def device_named(name: str) -> str | None:
    """A --device choice -> the device (None for "auto"); ValueError for cuda without a GPU."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    return None if name == "auto" else name


def fit_mask(source, mask, resize: bool, hint: str | None = None):
    """mask [1, 1, h, w] -> the source's [1, 1, H, W]: stretched when ``resize`` (--resize-mask),
    else an ``EditError`` naming both sizes (``hint`` ends it; default: pass --resize-mask)."""
    import torch.nn.functional as F

    from .editor import RESIZE_MASK_HINT, check_mask_size

    if resize and mask.shape[-2:] != source.shape[-2:]:
        mask = F.interpolate(mask, size=source.shape[-2:], mode="bilinear", align_corners=False)
    check_mask_size(source, mask, RESIZE_MASK_HINT if hint is None else hint)
    return mask


def exemplar_mask_of(exemplar, exemplar_mask, names=("--exemplar", "--exemplar-mask"), say=print):
    """exemplar [1, 3|4, H, W], exemplar mask [1, 1, H, W] (as ``load_mask`` reads it) or None ->
    (exemplar [1, 3, H, W], the exemplar mask [H, W] the edit uses or None): the one conversion
    of ``edit`` and ``batch``. A cut-out's alpha is decided on once, by ``alpha_object_mask``
    (which warns of an alpha that marks nothing), so what is said (``say``) is what the edit
    does; an exemplar mask that looks like a background mask gets a warning. ``names``: how
    the exemplar and its mask are called in messages."""
    from .preprocess import alpha_object_mask, mask_looks_inverted

    exemplar_name, mask_name = names
    if exemplar_mask is not None:
        exemplar_mask = exemplar_mask[0, 0]
        if mask_looks_inverted(exemplar_mask):
            log.warning(
                "%s covers the whole border but not the centre: white must be the object; if "
                "yours marks the background, invert it",
                mask_name,
            )
    if exemplar.shape[1] == 4:
        if exemplar_mask is not None:
            say(f"{exemplar_name} has transparency, but {mask_name} is given and is used instead")
        else:
            alpha_mask = alpha_object_mask(exemplar[:, 3])
            if alpha_mask is not None:
                say(
                    f"{exemplar_name} has transparency: its alpha is the exemplar mask "
                    "(opaque = object)"
                )
                exemplar_mask = alpha_mask[0]
        exemplar = exemplar[:, :3]
    return exemplar, exemplar_mask


def _what_was_written(region, paste_back: bool) -> str:
    """The printed account of an edit: which window was processed and what the file holds."""
    if region is None:
        return "the source unchanged (the mask is empty)"
    window = (
        f"window {region.x1 - region.x0}x{region.y1 - region.y0} at ({region.x0}, {region.y0}), "
        f"processed at {region.width}x{region.height}"
    )
    if paste_back:
        return f"the source with the edited {window}"
    return (
        f"only the processed window at its processing size {region.width}x{region.height} "
        f"(--no-paste-back), not pasted into the source: the {window}"
    )


def add_headless_command(subparsers: argparse._SubParsersAction) -> None:
    from . import headless

    p = subparsers.add_parser(
        "headless",
        help="run an API-format workflow on a running ComfyUI and download the results",
        description=headless.DESCRIPTION,
    )
    headless.add_arguments(p)
    p.set_defaults(func=run_headless)


def run_headless(args: argparse.Namespace) -> int:
    from . import headless

    return headless.run_args(args)


def add_batch_command(subparsers: argparse._SubParsersAction) -> None:
    from . import batch

    p = subparsers.add_parser(
        "batch",
        help="run a manifest of edits (or the COCOEE bench), resumable and shardable",
        description=batch.DESCRIPTION,
    )
    batch.add_arguments(p)
    p.set_defaults(func=batch.run_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exemplar_core",
        description="Paint-by-Example without ComfyUI: edit, convert and inspect checkpoints, "
        "run the demo, or drive a running ComfyUI headlessly",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress and details (default: off)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_edit_command(sub)
    from .checkpoint import cli as checkpoint_cli
    from .demo import add_demo_command

    checkpoint_cli.register(sub)
    add_demo_command(sub)
    add_headless_command(sub)
    add_batch_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        # Every error class of ours is a ValueError carrying a message written for the user;
        # OSError covers what the system refuses (a full disk, a permission taken away mid-run).
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
