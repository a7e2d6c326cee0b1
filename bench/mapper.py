"""The Exemplar Mapper's path against Exemplar Encode's on the same images (COMFYUI_PATH needed).

    python -m bench.mapper [--checkpoint PATH] [--json OUT.json]

(a) Encoder inputs, independent of any weights: ComfyUI's ``clip_preprocess`` as CLIPVisionEncode
    with crop "none" runs it (bicubic antialiased squash to 224 px, then rounding to 8-bit levels)
    against the pack's ``preprocess_exemplar`` (squash: the same resize, kept in float): max and
    mean absolute difference of the CLIP-normalised inputs.
(b) Conditioning: the positive of each path through the same full-size ViT-L/14 tower and mapper
    (random, seeded, built here; ``--checkpoint``: a real checkpoint's encoder): relative L2
    difference and cosine similarity. "inputs only": the pack's tower on both inputs (the
    preprocessing's share); "stock path": ComfyUI's own CLIP Vision model built from the same tower
    (weights in fp16 as ComfyUI keeps them) and the Mapper's class-token path, against the pack's
    encoder in fp32 (what a user gets on a CPU).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from PIL import Image

from .common import REPO, write_report

SEED = 0


def images() -> dict[str, torch.Tensor]:
    """Named test images, IMAGE layout [1, H, W, 3] float 0..1: the templates' exemplar and
    synthetic ones (noise, smooth, sharp edges, already 224 px, tiny)."""
    rng = np.random.default_rng(SEED)
    with Image.open(REPO / "example_inputs" / "exemplar.png") as file:
        example = np.asarray(file.convert("RGB"), dtype=np.float32) / 255
    y, x = np.mgrid[0:768, 0:1024] / 1024.0
    smooth = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], -1)
    checker = ((np.indices((200, 300)).sum(0) // 10) % 2).astype(np.float32)
    pictures = {
        f"example exemplar {example.shape[1]}x{example.shape[0]}": example,
        "noise 640x480": rng.random((480, 640, 3)),
        "smooth 1024x768": smooth,
        "checkerboard 300x200": np.repeat(checker[..., None], 3, -1),
        "noise 224x224": rng.random((224, 224, 3)),
        "noise 40x40": rng.random((40, 40, 3)),
    }
    return {name: torch.from_numpy(np.asarray(p, np.float32))[None] for name, p in pictures.items()}


def build_encoder(checkpoint: str | None):
    from exemplar_core.config import EncoderConfig
    from exemplar_core.encoder import ExemplarEncoder

    if checkpoint is None:
        torch.manual_seed(SEED)
        return ExemplarEncoder(EncoderConfig()).eval()
    from exemplar_core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    encoder = ExemplarEncoder(ckpt.configs.encoder)
    encoder.load_state_dict(ckpt.encoder)
    return encoder.float().eval()


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.flatten().double(), b.flatten().double()
    return {
        "relative_l2": float((a - b).norm() / b.norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
    }


def measure(checkpoint: str | None) -> dict:
    if not os.environ.get("COMFYUI_PATH"):
        raise SystemExit(
            "error: set COMFYUI_PATH to a ComfyUI checkout (COMFYUI_PATH=/path/to/ComfyUI)"
        )
    from bench.nodes import load_host

    load_host()  # ComfyUI on sys.path, CPU mode
    import comfy.clip_vision

    from exemplar_core.checkpoint.clip_vision import clip_vision_state_dict
    from exemplar_core.preprocess import preprocess_exemplar

    encoder = build_encoder(checkpoint)
    config = encoder.config
    stock = comfy.clip_vision.load_clipvision_from_sd(clip_vision_state_dict(encoder.state_dict()))
    rows = {}
    with torch.inference_mode():
        for name, image in images().items():
            ours = preprocess_exemplar(image, config, mode="squash")
            theirs = comfy.clip_vision.clip_preprocess(
                image, size=config.image_size, mean=config.mean, std=config.std, crop=False
            ).float()
            difference = (ours - theirs).abs()
            positive = encoder(ours)
            rows[name] = {
                "input_max_abs": float(difference.max()),
                "input_mean_abs": float(difference.mean()),
                "inputs_only": compare(encoder(theirs), positive),
                "stock_path": compare(
                    encoder.project_class_token(
                        stock.encode_image(image, crop=False)["last_hidden_state"][:, 0]
                    ),
                    positive,
                ),
            }
    return {"weights": checkpoint or f"random ViT-L/14 + mapper (seed {SEED})", "images": rows}


def report(result: dict) -> str:
    lines = [
        f"weights: {result['weights']}",
        "(a) normalised 224 px encoder inputs, ComfyUI clip_preprocess (crop none) vs the pack's "
        "squash; (b) positive, relative L2 / cosine",
        f"{'image':<26} {'max abs':>8} {'mean abs':>9}   {'inputs only':>20}   {'stock path':>20}",
    ]
    for name, row in result["images"].items():
        a, b = row["inputs_only"], row["stock_path"]
        lines.append(
            f"{name:<26} {row['input_max_abs']:8.4f} {row['input_mean_abs']:9.5f}   "
            f"{a['relative_l2']:9.2e} / {a['cosine']:.7f}   {b['relative_l2']:9.2e} / "
            f"{b['cosine']:.7f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mapper", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--checkpoint", help="a Paint-by-Example checkpoint whose encoder to use")
    parser.add_argument("--json", help="also write the figures to this new JSON file")
    args = parser.parse_args(argv)
    result = measure(args.checkpoint)
    print(report(result))
    if args.json is not None:
        write_report(args.json, result, replace=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
