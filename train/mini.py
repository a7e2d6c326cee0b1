"""Train the miniature world's model end to end with the project's own trainer, on a CPU.

    python -m train.mini [--out runs/mini] [--steps 3000] [--vae-steps 1500] [--tower-steps 1500]

Stages (each skipped when its output already exists, so an interrupted run continues):
1. synthetic scenes (``train.synthetic``, 64 px, 4000 train / 200 test, seed 0);
2. the VAE stage (``train.vae``: the mini AutoencoderKL on 32 px crops);
3. the tower stage (``train.tower``: the mini CLIP tower learns to name the training objects, a
   stand-in for CLIP's pre-training; frozen afterwards, as CLIP is);
4. the Paint-by-Example stage (``python -m train --config train/configs/mini.toml``), resumable.
The result is ``OUT/train/models/pbe-final.safetensors`` (EMA weights, fp16). Copy it to
``models/pbe-mini.safetensors`` to make it the pack's embedded default. Needs the training extra
(``pip install -e ".[train]"``), checked before the first stage.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from exemplar_core.argtypes import positive_int

from .preflight import PreflightError, check_out_dir, is_run_folder, require_training_extra

CONFIG = Path(__file__).resolve().parent / "configs" / "mini.toml"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m train.mini", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/mini", help="working folder (runs/mini)")
    p.add_argument(
        "--steps", type=positive_int, default=3000, help="main-stage optimiser steps (3000)"
    )
    p.add_argument("--vae-steps", type=positive_int, default=1500, help="VAE-stage steps (1500)")
    p.add_argument(
        "--tower-steps", type=positive_int, default=1500, help="tower-stage steps (1500)"
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    again = f"python -m train.mini {shlex.join(argv)}".rstrip()
    try:
        require_training_extra()  # before the data, VAE and tower stages spend their minutes
        check_out_dir(out / "train", resume=is_run_folder(out / "train"))
    except PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _stages(args, out, again)
    except KeyboardInterrupt:  # the data, VAE and tower stages (the trainer saves, then stops)
        print(
            f"\ninterrupted; finished stages are kept. Continue with:\n  {again}", file=sys.stderr
        )
        return 130


def _stages(args: argparse.Namespace, out: Path, again: str) -> int:
    from . import synthetic
    from .config import load_config
    from .signals import exit_code
    from .tower import tower_config, train_tower
    from .trainer import TrainingError, TrainingStopped, train
    from .vae import train_vae, vae_config

    timings: dict[str, float] = {}

    data = out / "data"
    if not (data / "train.jsonl").exists():
        start = time.perf_counter()
        synthetic.main(
            [
                "--out",
                str(data),
                "--train",
                "4000",
                "--test",
                "200",
                "--eval",
                "32",
                "--size",
                "64",
                "--seed",
                "0",
            ]
        )
        timings["data"] = time.perf_counter() - start

    vae_file = out / "vae" / "vae.safetensors"
    if not vae_file.exists():
        start = time.perf_counter()
        train_vae(data / "train", out / "vae", vae_config("mini"), steps=args.vae_steps)
        timings["vae"] = time.perf_counter() - start

    tower_file = out / "tower" / "tower.safetensors"
    if not tower_file.exists():
        start = time.perf_counter()
        train_tower(data / "train.jsonl", out / "tower", tower_config("mini"), args.tower_steps)
        timings["tower"] = time.perf_counter() - start

    overrides = [
        f"out_dir={out / 'train'}",
        f"model.vae={vae_file}",
        f"model.clip={tower_file}",
        f"data.path={data / 'train.jsonl'}",
        f"train.max_steps={args.steps}",
    ]
    config = load_config(str(CONFIG), overrides)
    resume = is_run_folder(out / "train")
    start = time.perf_counter()
    try:
        train(config, resume=resume)
    except TrainingStopped as stop:
        print(f"{stop}. Continue with:\n  {again}", file=sys.stderr)
        return exit_code(stop.signum)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    timings["pbe"] = time.perf_counter() - start
    for stage, seconds in timings.items():
        print(f"{stage:>5}: {seconds / 60:.1f} min")
    print(
        f"total: {sum(timings.values()) / 60:.1f} min; model: "
        f"{out / 'train' / 'models' / 'pbe-final.safetensors'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
