"""VAE stage for models trained from scratch (the miniature world): a small AutoencoderKL.

The published Paint-by-Example model inherits Stable Diffusion's VAE; a model of another size needs
its own. This trains one on a folder of images (random square crops, flips) with an L1
reconstruction loss and a small KL term, and writes its weights (diffusers ``AutoencoderKL`` keys)
plus its config as ``vae.safetensors``, which ``python -m train`` takes as ``model.vae``.

    python -m train.vae --images data/synthetic/train --out runs/vae --config mini --steps 1500
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

from exemplar_core.files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def vae_config(name: str) -> dict:
    from exemplar_core.model import ModelConfigs

    return dict(ModelConfigs.named(name).vae)


class ImageCrops(torch.utils.data.IterableDataset):
    """Endless random ``resolution``-px crops at the images' native scale (the VAE is fully
    convolutional: small crops train it as well as whole images, at a fraction of the cost),
    with horizontal flips, in -1..1. Images smaller than ``resolution`` are resized up."""

    def __init__(self, paths: list[Path], resolution: int, seed: int) -> None:
        self.paths, self.resolution, self.seed = paths, resolution, seed

    def __iter__(self):
        from PIL import Image

        rng = random.Random(self.seed)
        while True:
            path = rng.choice(self.paths)
            try:
                image = Image.open(path).convert("RGB")
            except OSError:
                continue
            w, h = image.size
            side = min(self.resolution, w, h)
            x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
            image = image.crop((x0, y0, x0 + side, y0 + side))
            if side != self.resolution:
                image = image.resize((self.resolution, self.resolution), Image.BICUBIC)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
            yield torch.from_numpy(array).permute(2, 0, 1)


def train_vae(
    images: Path,
    out: Path,
    config: dict,
    steps: int = 600,
    batch_size: int = 16,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    resolution: int = 32,
    seed: int = 0,
    log_every: int = 50,
    device: str | torch.device = "cpu",
) -> Path:
    """Train on ``device`` and write ``out/vae.safetensors``; returns its path."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from exemplar_core.model import build_vae

    paths = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images}")
    torch.manual_seed(seed)
    vae: AutoencoderKL = build_vae(config).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loader = torch.utils.data.DataLoader(
        ImageCrops(paths, resolution, seed), batch_size=batch_size, num_workers=0
    )
    batches = iter(loader)
    started = time.perf_counter()
    vae.train()
    for step in range(1, steps + 1):
        x = next(batches).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.l1_loss(recon, x)
        kl = posterior.kl().mean()
        loss = rec + kl_weight * kl
        if not torch.isfinite(loss):
            raise FloatingPointError(f"VAE loss became {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            rate = step * batch_size / (time.perf_counter() - started)
            print(
                f"vae step {step}/{steps} l1 {rec.item():.4f} kl {kl.item():.1f} "
                f"({rate:.1f} img/s)",
                flush=True,
            )
    # Latents are scaled to unit variance for the diffusion model, as SD's 0.18215 does.
    vae.eval()
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(next(batches).to(device)).latent_dist.mode() for _ in range(8)]
        )
    config = {**config, "scaling_factor": round(float(1.0 / latents.std()), 5)}
    print(f"latent std {latents.std().item():.4f} -> scaling_factor {config['scaling_factor']}")
    out.mkdir(parents=True, exist_ok=True)
    target = out / "vae.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    metadata = {"vae_config": json.dumps(config), "steps": str(steps)}
    atomic_write(target, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return target


def load_vae_weights(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(diffusers AutoencoderKL config, its state dict) from a file ``train_vae`` wrote."""
    from exemplar_core.checkpoint.safe_read import read_safetensors

    state, metadata = read_safetensors(Path(path), lazy=False)
    if "vae_config" not in metadata:
        raise ValueError(f"{path} has no vae_config metadata: write it with python -m train.vae")
    return json.loads(metadata["vae_config"]), state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.vae", description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True, help="folder of training images (searched deeply)")
    p.add_argument("--out", required=True, help="output folder for vae.safetensors")
    p.add_argument("--config", default="mini", help="VAE architecture: mini or tiny")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--resolution", type=int, default=32, help="crop size in px (32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (Path(args.out) / "vae.safetensors").exists():
        p.error(f"{args.out}/vae.safetensors exists; choose another --out")
    path = train_vae(
        Path(args.images),
        Path(args.out),
        vae_config(args.config),
        args.steps,
        args.batch_size,
        args.lr,
        args.kl_weight,
        args.resolution,
        args.seed,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
