"""``convert``, ``info``, ``merge-lora``, ``export-clip-vision``: checkpoint commands.

Part of ``python -m exemplar_core``; standalone: ``python -m exemplar_core.checkpoint.cli convert
SRC DST.safetensors [--dtype fp16]``, ``python -m exemplar_core.checkpoint.cli info FILE`` (a
checkpoint or a LoRA file) and ``... merge-lora BASE LORA[:S] ... --out OUT.safetensors``.
``register`` adds them to another argparse CLI.
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
from .safe_read import safetensors_header
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


def _is_lora_file(path: Path) -> bool:
    """Whether ``path`` is a ``.safetensors`` LoRA (read from its header only)."""
    from ..lora import is_lora_keys

    if path.suffix != ".safetensors" or not path.is_file():
        return False
    header = safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    return is_lora_keys([k for k in header if k != "__metadata__"], metadata)


def run_info(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from ..lora import read_lora

    out = out or sys.stdout
    try:
        path = Path(args.file)
        if _is_lora_file(path):
            lora = read_lora(path)
            lines = lora.describe().splitlines()
            if args.full and lora.metadata:
                lines.extend(_metadata_lines(lora.metadata, full=True))
        else:
            lines = describe(load_checkpoint(path, lazy=True), full_metadata=args.full)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in lines:
        print(line, file=out)
    return 0


_STORAGE_DTYPES = {str(dtype).removeprefix("torch."): name for name, dtype in DTYPES.items()}


def _storage_dtype(ckpt: PbECheckpoint) -> str:
    """The one dtype all of ``ckpt``'s floating tensors use (a ``--dtype`` name), else fp32."""
    found = {d for part in ckpt.dtypes().values() for d in part.split("+") if d != "none"}
    return _STORAGE_DTYPES.get(found.pop(), "fp32") if len(found) == 1 else "fp32"


def run_merge_lora(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from ..lora import check_layout, merge_loras, parse_lora_argument, read_lora

    out = out or sys.stdout
    base, dst = Path(args.base), Path(args.out)
    try:
        # Everything about --out is checked before the model is read, as in convert.
        specs = [parse_lora_argument(text, "LORA") for text in args.loras]
        inputs = [base, *(path for path, _ in specs)]
        check_destination(dst, overwrite=args.overwrite, inputs=inputs, what="--out")
        if dst.suffix != ".safetensors":
            raise CheckpointError(f"{dst} must end in .safetensors (the single-file format)")
        loras = [(read_lora(path), strength) for path, strength in specs]
        for lora, _ in loras:
            check_layout(lora)  # what needs no model fails before the model is read
        ckpt = load_checkpoint(base)
        # By default the base's own storage dtype: merging does not grow an fp16 file.
        dtype = args.dtype or _storage_dtype(ckpt)
        merged = merge_loras(ckpt, loras)
        save_single_file(merged, dst, dtype=DTYPES[dtype])
    except (CheckpointError, DestinationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for lora, strength in loras:
        print(f"merged {lora.path} at strength {strength:g}", file=out)
    print(f"wrote {dst} ({dtype}, {dst.stat().st_size / 2**20:.1f} MiB)", file=out)
    return 0


def run_export_clip_vision(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from .clip_vision import check_clip_vision_name, save_clip_vision

    out = out or sys.stdout
    src, dst = Path(args.src), Path(args.dst)
    try:
        if dst.exists():  # never replaced: the user's CLIP Vision file may be the real one
            raise DestinationError(f"DST {dst} already exists; choose another path")
        check_destination(dst, overwrite=False, inputs=[src], what="DST")
        check_clip_vision_name(dst)  # before the checkpoint is read, as in convert
        ckpt = load_checkpoint(src)
        save_clip_vision(ckpt.encoder, ckpt.configs.encoder, dst, DTYPES[args.dtype])
    except (CheckpointError, DestinationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {dst} ({args.dtype}, {dst.stat().st_size / 2**20:.1f} MiB)", file=out)
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
        help="say what a checkpoint or LoRA file is (or why it is not Paint-by-Example)",
        description="Print a checkpoint's format, architecture, parameter counts, dtypes and "
        "metadata. Reads only the header (safetensors) or a memory map (.ckpt). For a LoRA "
        ".safetensors: its rank, alpha, adapted UNet layers by group, exemplar mode, parameter "
        "count, file size, base model, training step and a summary of its training config.",
    )
    info.add_argument("file", help="checkpoint file, diffusers folder or LoRA .safetensors")
    info.add_argument(
        "--full",
        action="store_true",
        help=f"print every metadata value whole (default: values longer than "
        f"{METADATA_PREVIEW} characters are cut at a line, with a note saying how much is left)",
    )
    info.set_defaults(func=run_info)

    merge = subparsers.add_parser(
        "merge-lora",
        help="bake one or more LoRA files into a single-file model",
        description="Merge Paint-by-Example LoRA files into a model (W + strength * delta for "
        "every layer each file adapts, UNet and exemplar encoder, in fp32) and write the project "
        "single-file .safetensors; its metadata lists the merged files and strengths. --out is "
        "checked first (never the base or a LoRA, never an existing file without --overwrite).",
    )
    merge.add_argument("base", help="the model: any checkpoint layout convert reads")
    merge.add_argument(
        "loras",
        nargs="+",
        metavar="LORA[:STRENGTH]",
        help="LoRA .safetensors, merged in order; STRENGTH after the last ':' (default 1)",
    )
    merge.add_argument("--out", required=True, help="output .safetensors path (required)")
    merge.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="storage dtype of floating tensors (default: the base's, fp32 when it mixes dtypes)",
    )
    merge.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists (default: an existing --out is an error)",
    )
    merge.set_defaults(func=run_merge_lora)

    export = subparsers.add_parser(
        "export-clip-vision",
        help="write a checkpoint's CLIP tower as a stock clip_vision file (Exemplar Mapper)",
        description="Write the checkpoint's OpenAI CLIP ViT-L/14 tower in the layout ComfyUI's "
        "CLIPVisionLoader reads (models/clip_vision), for CLIPVisionEncode + Exemplar Mapper when "
        "no clip-vit-large-patch14 file is at hand. The checkpoint holds no CLIP projection, so "
        "the file's image_embeds are zero (other CLIP Vision uses need the real file). DST is "
        "never replaced.",
    )
    export.add_argument("src", help="a Paint-by-Example checkpoint (any layout convert reads)")
    export.add_argument("dst", help="output .safetensors path (must not exist)")
    export.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="fp16",
        help="storage dtype; ComfyUI keeps CLIP Vision in fp16 on most devices "
        "(default: %(default)s)",
    )
    export.set_defaults(func=run_export_clip_vision)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exemplar_core.checkpoint.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
