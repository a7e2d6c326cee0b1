"""Inference speed and memory: this pack's editor against diffusers' PaintByExamplePipeline.

Both sides get the same SD1.5-sized architecture with the same random weights (built on the meta
device and materialised from one seed in each worker process), the same inputs, steps, scale and
scheduler (PNDM, as the published model). Each run is a fresh process, sides alternate, and the
report gives median wall time of the edit (model build excluded), peak memory (RSS on CPU, max
allocated on GPU) and the ratio ours/theirs.

    python -m bench.inference same   [--size 256 --steps 10 --repeats 3]
    python -m bench.inference large  [--size 256 --steps 10 --repeats 2]

``--compile MODE`` runs the editor's UNet step compiled (``exemplar_core.compile``: compile,
cudagraphs); its worker then does one untimed edit first (the compile) unless --warmup says
otherwise, so the figure is the warm, compiled edit. ``same --sides editor`` times only the
listed sides (editor, diffusers, node; e.g. the compiled editor without re-timing the others).

``large``: a 4096x3072 photo with a 300x300 mask. This pack processes only a window around the
mask; diffusers is run on the photo resized to --size (its full-size run is attempted only when
its self-attention fits in memory, else reported as not run with the estimate).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from exemplar_core.cli import add_compile_option
from exemplar_core.dtypes import DTYPES

from .common import (
    add_warmup_option,
    alternate,
    dtype_named,
    materialise,
    pick_device,
    print_table,
    summarise,
    timed,
    worker_argv,
    write_report,
)

WEIGHT_SEED = 1234


def build_model():
    """The published architecture with deterministic random weights."""
    from exemplar_core.model import ModelConfigs, PaintByExampleModel

    with torch.device("meta"):
        model = PaintByExampleModel(ModelConfigs.published())
    return materialise(model, WEIGHT_SEED).eval()


def make_inputs(width: int, height: int, box: tuple[int, int, int, int]):
    """Deterministic source [1,3,H,W], edit mask [1,1,H,W] and a 224 exemplar, all 0..1."""
    g = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, height, width, generator=g)
    mask = torch.zeros(1, 1, height, width)
    x0, y0, x1, y1 = box
    mask[..., y0:y1, x0:x1] = 1
    exemplar = torch.rand(1, 3, 224, 224, generator=g)
    return source, mask, exemplar


def editor_edit(args):
    """A ready editor on the worker's inputs: (edit(), None); edit() returns the EditResult,
    whose region gives the processed size."""
    from exemplar_core.editor import Editor, EditSettings

    device = pick_device(args.device)
    model = build_model()
    editor = Editor(
        model,
        device=device,
        dtype=dtype_named(args.dtype, device),
        progress=False,
        compile=getattr(args, "compile", "off"),
    )
    source, mask, exemplar = make_inputs(args.width, args.height, tuple(args.box))
    settings = EditSettings(
        steps=args.steps, similarity=5.0, seed=0, scheduler="pndm", size=args.size
    )
    return (lambda: editor.edit(source, mask, exemplar, settings)), None


def diffusers_edit(args):
    """diffusers' PaintByExamplePipeline with the same weights on the worker's inputs (resized
    first when ``args.resize_to``): (edit(), processed size); edit() returns the images."""
    import torch.nn.functional as F
    from diffusers.pipelines.deprecated.paint_by_example import PaintByExamplePipeline
    from diffusers.pipelines.deprecated.paint_by_example.image_encoder import (
        PaintByExampleImageEncoder,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    from exemplar_core.checkpoint.diffusers import clip_vision_config
    from exemplar_core.checkpoint.keymap import encoder_to_diffusers
    from exemplar_core.editor import make_scheduler

    device = pick_device(args.device)
    dtype = dtype_named(args.dtype, device)
    model = build_model()
    clip = CLIPVisionConfig(**clip_vision_config(model.configs.encoder))
    # Built for real, not on meta: transformers keeps non-persistent buffers (position_ids) that
    # no state dict restores, and to_empty() would leave them as garbage indices.
    image_encoder = PaintByExampleImageEncoder(clip)
    level = any(k.startswith("model.vision_model.") for k in image_encoder.state_dict())
    image_encoder.load_state_dict(
        encoder_to_diffusers(model.encoder.state_dict(), vision_model_level=level), strict=False
    )
    del model.encoder  # the pipeline has its own copy now
    pipe = PaintByExamplePipeline(
        vae=model.vae,
        image_encoder=image_encoder,
        unet=model.unet,
        scheduler=make_scheduler("pndm"),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(),
        requires_safety_checker=False,
    ).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    source, mask, exemplar = make_inputs(args.width, args.height, tuple(args.box))
    if args.resize_to:
        # diffusers processes whatever it is given: shrink the photo (long side = size, /8)
        scale = args.resize_to / max(args.width, args.height)
        size = (int(args.height * scale) // 8 * 8, int(args.width * scale) // 8 * 8)
        source = F.interpolate(source, size=size, mode="bilinear", antialias=True)
        mask = F.interpolate(mask, size=size, mode="bilinear")

    def edit():
        with torch.no_grad():
            return pipe(
                example_image=_to_pil(exemplar),
                image=(source * 2 - 1).to(device, dtype),
                mask_image=mask.to(device, dtype),
                num_inference_steps=args.steps,
                guidance_scale=5.0,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            ).images

    return edit, f"{source.shape[-1]}x{source.shape[-2]}"


def worker_editor(args) -> dict:
    edit, _ = editor_edit(args)
    # A compiled editor's first edit is the compile: warm by default, as a user's later edits are.
    warmup = "1" if args.compile != "off" and args.warmup == "auto" else args.warmup
    result, seconds, peak = timed(edit, pick_device(args.device), warmup)
    region = result.region
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "processed": f"{region.width}x{region.height}",
        "output": f"{result.image.shape[-1]}x{result.image.shape[-2]}",
    }


def worker_diffusers(args) -> dict:
    edit, processed = diffusers_edit(args)
    out, seconds, peak = timed(edit, pick_device(args.device), args.warmup)
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "processed": processed,
        "output": f"{out.shape[2]}x{out.shape[1]}",
    }


def _to_pil(image: torch.Tensor):
    from PIL import Image

    array = (image[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(array)


def _worker_argv(side: str, args, width: int, height: int, box, resize_to: int = 0) -> list[str]:
    module = "bench.nodes" if side == "node" else "bench.inference"
    return worker_argv(
        module,
        side,
        width=width,
        height=height,
        box=box,
        steps=args.steps,
        size=args.size,
        device=args.device,
        dtype=args.dtype,
        warmup=args.warmup,
        resize_to=resize_to if side != "node" else None,
        compile=args.compile if side == "editor" else None,
    )


def attention_bytes(width: int, height: int, dtype_bytes: int = 4) -> int:
    """Memory of one self-attention score matrix at the UNet's first level (8 heads, batch 2)."""
    tokens = (width // 8) * (height // 8)
    return 2 * 8 * tokens * tokens * dtype_bytes


SAME_SIDES = ("editor", "diffusers", "node")


def _sides(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SAME_SIDES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown side(s) {', '.join(unknown) or '(none)'}; expected some of "
            + ",".join(SAME_SIDES)
        )
    return names


def cmd_same(args) -> dict:
    size = args.size
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    wanted = args.sides or SAME_SIDES
    sides = {
        name: _worker_argv(name, args, size, size, box)
        for name in ("editor", "diffusers")
        if name in wanted
    }
    if "node" in wanted and os.environ.get("COMFYUI_PATH"):  # the node, in a real ComfyUI
        sides["node"] = _worker_argv("node", args, size, size, box)
    elif "node" in wanted:
        print("COMFYUI_PATH is not set: the node side is skipped")
    results = alternate(sides, args.repeats)
    keys = ("seconds", "peak_mb")
    summary = summarise(results, keys)
    print_table(summary, keys, baseline="diffusers")
    return {
        "benchmark": "same",
        "size": size,
        "steps": args.steps,
        "runs": results,
        "median": summary,
    }


def cmd_large(args) -> dict:
    photo = (4096, 3072)
    box = (1900, 1400, 2200, 1700)  # 300 x 300
    small_box = (106, 106, 406, 406)  # the same 300 x 300 mask in a 512 x 512 source
    sides = {
        "editor_4096": _worker_argv("editor", args, *photo, box),
        "editor_512": _worker_argv("editor", args, 512, 512, small_box),
        "diffusers_resized": _worker_argv("diffusers", args, *photo, box, resize_to=args.size),
    }
    full_bytes = attention_bytes(*photo)
    available = _available_memory_bytes(args.device)
    if full_bytes < available * 0.5:
        sides["diffusers_4096"] = _worker_argv("diffusers", args, *photo, box)
    results = alternate(sides, args.repeats)
    keys = ("seconds", "peak_mb")
    summary = summarise(results, keys)
    print_table(summary, keys, baseline="editor_512")
    report = {
        "benchmark": "large",
        "photo": photo,
        "mask_box": box,
        "size": args.size,
        "steps": args.steps,
        "runs": results,
        "median": summary,
    }
    if "diffusers_4096" not in sides:
        report["diffusers_4096"] = (
            f"not run: one self-attention matrix at full size needs {full_bytes / 2**30:.0f} GiB, "
            f"the machine has {available / 2**30:.0f} GiB"
        )
        print(report["diffusers_4096"])
    ratio = summary["editor_4096"]["seconds"] / summary["editor_512"]["seconds"]
    report["cost_ratio_4096_vs_512"] = ratio
    print(f"editor 4096x3072 / 512x512 time: {ratio:.2f} (target <= 1.2)")
    return report


def _available_memory_bytes(device: str) -> int:
    if pick_device(device).type == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    for name, default_size, default_repeats in (("same", 256, 3), ("large", 256, 2)):
        p = sub.add_parser(name)
        p.add_argument("--size", type=int, default=default_size, help="processing resolution")
        p.add_argument("--steps", type=int, default=10)
        p.add_argument("--repeats", type=int, default=default_repeats)
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))
        p.add_argument("--out", default=f"out/bench/inference_{name}.json")
        add_warmup_option(p)
        add_compile_option(p)
        if name == "same":
            p.add_argument(
                "--sides",
                type=_sides,
                default=(),
                help="comma-separated sides to time: editor,diffusers,node (default: all; the "
                "node only when COMFYUI_PATH is set)",
            )
    w = sub.add_parser("worker", help="internal: one measured run in this process")
    w.add_argument("side", choices=("editor", "diffusers"))
    w.add_argument("--width", type=int, required=True)
    w.add_argument("--height", type=int, required=True)
    w.add_argument("--box", type=int, nargs=4, required=True)
    w.add_argument("--steps", type=int, required=True)
    w.add_argument("--size", type=int, required=True)
    w.add_argument("--device", default="auto")
    w.add_argument("--dtype", default="auto")
    w.add_argument("--resize-to", type=int, default=0)
    add_warmup_option(w)
    add_compile_option(w)
    args = parser.parse_args(argv)
    if args.command == "worker":
        fn = worker_editor if args.side == "editor" else worker_diffusers
        print(json.dumps(fn(args)))
        return 0
    report = cmd_same(args) if args.command == "same" else cmd_large(args)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
