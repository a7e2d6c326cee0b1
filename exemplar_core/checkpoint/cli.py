"""``convert`` and ``info`` commands: any Paint-by-Example checkpoint -> the project single file.

Part of ``python -m exemplar_core``; standalone: ``python -m exemplar_core.checkpoint.cli convert
SRC DST.safetensors [--dtype fp16]`` and ``python -m exemplar_core.checkpoint.cli info FILE``.
``register`` adds both to another argparse CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ..cli import EXIT_BAD_INPUT
from ..dtypes import DTYPES
from ..files import DestinationError, check_destination
from .container import CheckpointError, PbECheckpoint
from .load import load_checkpoint
from .single_file import save_single_file

_FORMAT_NAMES = {
    "official-ckpt": "official LDM checkpoint (.ckpt, weights under state_dict)",
    "official-safetensors": "official LDM checkpoint (.safetensors)",
    "diffusers": "diffusers PaintByExamplePipeline folder",
    "single-file": "paint-by-example-comfy single file",
}


def _millions(n: int) -> str:
    return f"{n:,} ({n / 1e6:.1f} M)"


def _unet_summary(config: dict[str, Any]) -> str:
    attn = ["x" if t.startswith("CrossAttn") else "-" for t in config["down_block_types"]]
    return (
        f"in {config['in_channels']}, out {config.get('out_channels', 4)}, channels "
        f"{list(config['block_out_channels'])}, {config.get('layers_per_block', 2)} res blocks "
        f"per level, attention {''.join(attn)}, context {config['cross_attention_dim']}, heads "
        f"{config.get('num_attention_heads') or config.get('attention_head_dim', 8)}"
    )


def _vae_summary(config: dict[str, Any]) -> str:
    return (
        f"channels {list(config['block_out_channels'])}, {config.get('layers_per_block', 2)} res "
        f"blocks per level, {config.get('latent_channels', 4)} latent channels, scale "
        f"{config.get('scaling_factor')}"
    )


# ``info`` and ``convert`` print each metadata value up to this many characters unless --full.
METADATA_PREVIEW = 2000


def _metadata_lines(metadata: dict[str, str], full: bool) -> list[str]:
    """Each metadata entry, JSON values pretty-printed; a cut says how much is left out."""
    lines = ["metadata:"]
    for key, value in sorted(metadata.items()):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        text = json.dumps(parsed, indent=2) if isinstance(parsed, (dict, list)) else value
        if not full and len(text) > METADATA_PREVIEW:
            cut = text.rfind("\n", 0, METADATA_PREVIEW)
            cut = cut if cut > 0 else METADATA_PREVIEW
            text = f"{text[:cut]}\n... {len(text) - cut:,} more characters, use --full to see all"
        first, *rest = text.splitlines() or [""]
        lines.append(f"  {key}: {first}")
        lines.extend(f"    {line}" for line in rest)
    return lines


def describe(ckpt: PbECheckpoint, full_metadata: bool = False) -> list[str]:
    """Human-readable lines: format, parts, configs, parameter counts, dtypes, metadata."""
    enc = ckpt.configs.encoder
    counts = ckpt.parameter_counts()
    dtypes = ckpt.dtypes()
    lines = [
        f"source:  {ckpt.source}",
        f"format:  {_FORMAT_NAMES.get(ckpt.format, ckpt.format)}",
        "parts:   unet, vae, exemplar encoder (CLIP vision tower + mapper + projection)",
        f"unet:    {_unet_summary(ckpt.configs.unet)}",
        f"vae:     {_vae_summary(ckpt.configs.vae)}",
        f"encoder: {enc.backbone}: {enc.image_size} px, patch {enc.patch_size}, width {enc.width}, "
        f"{enc.layers} layers, {enc.heads} heads, {'QuickGELU' if enc.quick_gelu else 'GELU'}; "
        f"mapper {enc.mapper_layers} blocks; output {enc.out_dim}",
        f"params:  unet {_millions(counts['unet'])}, vae {_millions(counts['vae'])}, encoder "
        f"{_millions(counts['encoder'])} (tower {_millions(counts['encoder.tower'])}, trained "
        f"{_millions(counts['encoder.trained'])}), total {_millions(counts['total'])}",
        f"dtype:   unet {dtypes['unet']}, vae {dtypes['vae']}, encoder {dtypes['encoder']}",
    ]
    if ckpt.metadata:
        lines.extend(_metadata_lines(ckpt.metadata, full_metadata))
    return lines


def _overwrite_requested(args: argparse.Namespace) -> bool:
    if args.force:
        print(
            "note: --force is deprecated and will be removed; use --overwrite (same meaning)",
            file=sys.stderr,
        )
    return bool(args.overwrite or args.force)


def run_convert(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    src, dst = Path(args.src), Path(args.dst)
    try:
        # Everything about DST is checked before SRC is read (minutes for the official .ckpt).
        check_destination(dst, overwrite=_overwrite_requested(args), inputs=[src], what="DST")
        if dst.suffix != ".safetensors":
            raise CheckpointError(f"{dst} must end in .safetensors (the single-file format)")
        ckpt = load_checkpoint(src)
        print("found:", file=out)
        for line in describe(ckpt):
            print(f"  {line}", file=out)
        ckpt.metadata.setdefault("converted_from", ckpt.format)
        save_single_file(ckpt, dst, dtype=DTYPES[args.dtype])
    except (CheckpointError, DestinationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {dst} ({args.dtype}, {dst.stat().st_size / 2**20:.1f} MiB)", file=out)
    return 0


def run_info(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        ckpt = load_checkpoint(args.file, lazy=True)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in describe(ckpt, full_metadata=args.full):
        print(line, file=out)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``convert`` and ``info`` subcommands to an argparse subparsers object."""
    convert = subparsers.add_parser(
        "convert",
        help="convert an official or diffusers checkpoint to the single-file format",
        description="Read a Paint-by-Example checkpoint (official .ckpt/.safetensors, diffusers "
        "folder or single file) and write the project single-file .safetensors. DST is checked "
        "first (folder created if missing, never over SRC, never over a file without "
        "--overwrite), so a bad DST fails before SRC is read.",
    )
    convert.add_argument("src", help="official model.ckpt / .safetensors, or a diffusers folder")
    convert.add_argument("dst", help="output .safetensors path (its folder is created if missing)")
    convert.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="fp32",
        help="storage dtype of floating tensors; fp32 is lossless (default: %(default)s)",
    )
    convert.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DST if it exists (default: an existing DST is an error)",
    )
    # The old name of --overwrite, kept so that scripts keep working; hidden from --help.
    convert.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    convert.set_defaults(func=run_convert)

    info = subparsers.add_parser(
        "info",
        help="say what a checkpoint is (or why it is not Paint-by-Example)",
        description="Print a checkpoint's format, architecture, parameter counts, dtypes and "
        "metadata. Reads only the header (safetensors) or a memory map (.ckpt).",
    )
    info.add_argument("file", help="checkpoint file or diffusers folder")
    info.add_argument(
        "--full",
        action="store_true",
        help=f"print every metadata value whole (default: values longer than "
        f"{METADATA_PREVIEW} characters are cut at a line, with a note saying how much is left)",
    )
    info.set_defaults(func=run_info)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exemplar_core.checkpoint.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
