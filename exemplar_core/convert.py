"""``convert`` and ``info`` commands: any Paint-by-Example checkpoint -> the project single file.

Standalone: ``python -m exemplar_core.convert convert SRC DST.safetensors [--dtype fp16]`` and
``python -m exemplar_core.convert info FILE``; ``register`` adds both to another argparse CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .formats import DTYPES, CheckpointError, PbECheckpoint, load_checkpoint, save_single_file

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


def describe(ckpt: PbECheckpoint) -> list[str]:
    """Human-readable lines: format, parts, configs, parameter counts, dtypes."""
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
        extra = ", ".join(f"{k}={v[:60]}" for k, v in sorted(ckpt.metadata.items()))
        lines.append(f"metadata: {extra}")
    return lines


def run_convert(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    src, dst = Path(args.src), Path(args.dst)
    if dst.suffix != ".safetensors":
        print(f"error: {dst} must end in .safetensors", file=sys.stderr)
        return 2
    if dst.exists() and not args.force:
        print(f"error: {dst} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    try:
        ckpt = load_checkpoint(src)
        print("found:", file=out)
        for line in describe(ckpt):
            print(f"  {line}", file=out)
        ckpt.metadata.setdefault("converted_from", ckpt.format)
        save_single_file(ckpt, dst, dtype=DTYPES[args.dtype])
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {dst} ({args.dtype}, {dst.stat().st_size / 2**20:.1f} MiB)", file=out)
    return 0


def run_info(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        ckpt = load_checkpoint(args.file, lazy=True)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for line in describe(ckpt):
        print(line, file=out)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``convert`` and ``info`` subcommands to an argparse subparsers object."""
    convert = subparsers.add_parser(
        "convert",
        help="convert an official or diffusers checkpoint to the single-file format",
        description="Read a Paint-by-Example checkpoint (official .ckpt/.safetensors, diffusers "
        "folder or single file) and write the project single-file .safetensors.",
    )
    convert.add_argument("src", help="official model.ckpt / .safetensors, or a diffusers folder")
    convert.add_argument("dst", help="output .safetensors path")
    convert.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="fp32",
        help="storage dtype of floating tensors (fp32 is lossless; default fp32)",
    )
    convert.add_argument("--force", action="store_true", help="overwrite an existing DST")
    convert.set_defaults(func=run_convert)

    info = subparsers.add_parser(
        "info", help="say what a checkpoint is (or why it is not Paint-by-Example)"
    )
    info.add_argument("file", help="checkpoint file or diffusers folder")
    info.set_defaults(func=run_info)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exemplar_core.convert")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
