"""Tower stage for models trained from scratch (the miniature world): a stand-in for CLIP.

Paint-by-Example conditions on a *pre-trained, frozen* CLIP tower: the exemplar's colour and kind
are already linearly readable in its class token, so the mapper and the UNet only have to learn
how to use them. A randomly initialised tower keeps that information too, but buried: its class
token barely moves from one exemplar to the next (a per-dimension spread of about 0.13 against
LayerNorm's unit scale for the mini tower), and a UNet trained from scratch on two CPU cores
learns to ignore so faint a signal (docs/miniature-world.md has the figures).

So the miniature world gets its own tiny "CLIP": this stage trains the mini open_clip tower to name
the objects of the training split (colour, shape and texture heads on the class token), on
reference crops made with the trainer's own crop and augmentation, then drops the heads and writes
the tower. ``python -m train`` loads it with ``model.clip`` and keeps it frozen, exactly as it
does the real CLIP weights.

    python -m train.tower --data runs/mini/data/train.jsonl --out runs/mini/tower
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from exemplar_core.config import EncoderConfig
from exemplar_core.files import atomic_write
from exemplar_core.preprocess import normalize

from .augment import (
    ReferenceAugment,
    augment_reference,
    crop_reference,
)

ATTRIBUTES = ("color", "shape", "texture")


class TowerDataError(ValueError):
    """The annotation file cannot feed the tower stage."""


def read_objects(jsonl: Path) -> tuple[list[Path], list[tuple[int, tuple, dict]]]:
    """(image paths, [(image index, box, attributes)]) from a ``train.synthetic`` JSONL file, whose
    lines carry ``objects`` (one ``{"color", "shape", "texture"}`` per box)."""
    jsonl = Path(jsonl)
    if not jsonl.is_file():
        raise TowerDataError(f"annotation file {jsonl} does not exist")
    images: list[Path] = []
    objects: list[tuple[int, tuple, dict]] = []
    for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            boxes, attrs = record["boxes"], record["objects"]
            path = jsonl.parent / record["image"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TowerDataError(
                f"{jsonl}:{number}: expected a JSON line with image, boxes and objects "
                f"(one {{color, shape, texture}} per box, as train.synthetic writes), got: {exc}"
            ) from exc
        if len(boxes) != len(attrs):
            raise TowerDataError(f"{jsonl}:{number}: {len(boxes)} boxes but {len(attrs)} objects")
        for box, attr in zip(boxes, attrs, strict=True):
            missing = [a for a in ATTRIBUTES if a not in attr]
            if missing:
                raise TowerDataError(f"{jsonl}:{number}: an object lacks {', '.join(missing)}")
            objects.append((len(images), tuple(int(v) for v in box), attr))
        images.append(path)
    if not objects:
        raise TowerDataError(f"{jsonl} has no annotated objects")
    return images, objects


def load_crops(
    images: list[Path], objects: list[tuple[int, tuple, dict]], pad: int
) -> list[torch.Tensor]:
    """Each object's padded box crop ``[3, h, w]`` in 0..1 (the trainer's ``crop_reference``)."""
    cache: dict[int, torch.Tensor] = {}
    crops = []
    for index, box, _attr in objects:
        if index not in cache:
            cache.clear()  # objects are grouped by image
            with Image.open(images[index]) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            cache[index] = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        crops.append(crop_reference(cache[index], box, pad))
    return crops


class Heads(nn.Module):
    """One linear classifier per attribute on the tower's class token (dropped after training)."""

    def __init__(self, width: int, vocab: dict[str, list[str]]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({a: nn.Linear(width, len(vocab[a])) for a in ATTRIBUTES})

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {a: head(pooled) for a, head in self.heads.items()}


def _batch(
    crops: list[torch.Tensor],
    labels: torch.Tensor,
    picks: list[int],
    rng: random.Random,
    augment: ReferenceAugment,
    config: EncoderConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = [
        normalize(
            augment_reference(crops[i], rng, augment, config.image_size), config.mean, config.std
        )
        for i in picks
    ]
    return torch.stack(pixels), labels[picks]


def train_tower(
    jsonl: Path,
    out: Path,
    config: EncoderConfig,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    pad: int = 3,
    holdout: float = 0.05,
    seed: int = 0,
    log_every: int = 100,
    device: str | torch.device = "cpu",
) -> Path:
    """Train the tower of ``config`` on the objects of ``jsonl`` on ``device``; write
    ``out/tower.safetensors``
    (open_clip tower keys under ``tower.``, the encoder config and held-out accuracies in its
    metadata) and return its path."""
    from safetensors.torch import save_file

    from exemplar_core.encoder import build_tower

    images, objects = read_objects(jsonl)
    vocab = {a: sorted({o[2][a] for o in objects}) for a in ATTRIBUTES}
    labels = torch.tensor(
        [[vocab[a].index(o[2][a]) for a in ATTRIBUTES] for o in objects], dtype=torch.long
    )
    crops = load_crops(images, objects, pad)
    order = list(range(len(crops)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(len(order) * holdout)) if len(order) > 1 else 0
    held, train_ids = order[:n_held], order[n_held:] or order
    # The trainer's reference augmentation, at the trainer's pad (the crop is already padded).
    augment = ReferenceAugment(pad=pad)

    torch.manual_seed(seed)
    tower = build_tower(config).to(device)
    heads = Heads(config.width, vocab).to(device)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    started = time.perf_counter()
    tower.train()
    for step in range(1, steps + 1):
        picks = [rng.choice(train_ids) for _ in range(batch_size)]
        pixels, target = _batch(crops, labels, picks, rng, augment, config)
        pixels, target = pixels.to(device), target.to(device)
        logits = heads(tower(pixels))
        loss = sum(F.cross_entropy(logits[a], target[:, k]) for k, a in enumerate(ATTRIBUTES))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"tower loss became {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            rate = step * batch_size / (time.perf_counter() - started)
            print(
                f"tower step {step}/{steps} loss {loss.item():.3f} ({rate:.0f} crops/s)", flush=True
            )
    tower.eval()
    accuracy = held_out_accuracy(tower, heads, crops, labels, held, config, seed)
    print("tower held-out accuracy: " + ", ".join(f"{a} {v:.3f}" for a, v in accuracy.items()))
    out.mkdir(parents=True, exist_ok=True)
    target_file = out / "tower.safetensors"
    state = {f"tower.{k}": v.detach().cpu().contiguous() for k, v in tower.state_dict().items()}
    metadata = {
        "encoder_config": json.dumps(config.to_dict()),
        "steps": str(steps),
        "held_out_accuracy": json.dumps(accuracy),
        "vocabulary": json.dumps(vocab),
    }
    atomic_write(target_file, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return target_file


@torch.no_grad()
def held_out_accuracy(
    tower: nn.Module,
    heads: Heads,
    crops: list[torch.Tensor],
    labels: torch.Tensor,
    held: list[int],
    config: EncoderConfig,
    seed: int,
) -> dict[str, float]:
    """Accuracy of each head on the held-out crops, augmented as in training."""
    if not held:
        return {}
    rng = random.Random(seed + 1)
    pixels, target = _batch(crops, labels, held, rng, ReferenceAugment(pad=0), config)
    device = next(tower.parameters()).device
    logits = heads(tower(pixels.to(device)))
    target = target.to(device)
    return {
        a: round(float((logits[a].argmax(1) == target[:, k]).float().mean()), 4)
        for k, a in enumerate(ATTRIBUTES)
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.tower", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="train.jsonl written by python -m train.synthetic")
    p.add_argument("--out", required=True, help="output folder for tower.safetensors")
    p.add_argument("--config", default="mini", help="encoder architecture: mini or tiny")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pad", type=int, default=3, help="crop padding around each box, px (3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (Path(args.out) / "tower.safetensors").exists():
        p.error(f"{args.out}/tower.safetensors exists; choose another --out")
    try:
        path = train_tower(
            Path(args.data),
            Path(args.out),
            tower_config(args.config),
            args.steps,
            args.batch_size,
            args.lr,
            args.pad,
            seed=args.seed,
        )
    except TowerDataError as exc:
        p.error(str(exc))
    print(f"wrote {path}")
    return 0


def tower_config(name: str) -> EncoderConfig:
    from exemplar_core.model import ModelConfigs

    return ModelConfigs.named(name).encoder


if __name__ == "__main__":
    raise SystemExit(main())
