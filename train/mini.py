"""Train the miniature world's model end to end with the project's own trainer.

    python -m train.mini [--preset cpu|gpu] [--out runs/mini] [--steps N] [--vae-steps N]
                         [--tower-steps N] [--smoke]

Stages (each skipped when its output already exists, so an interrupted run continues):
1. synthetic scenes (``train.synthetic``, 64 px, seed 0);
2. the VAE stage (``train.vae``: the mini AutoencoderKL on 32 px crops);
3. the tower stage (``train.tower``: the mini CLIP tower learns to name the training objects, a
   stand-in for CLIP's pre-training; frozen afterwards, as CLIP is);
4. the Paint-by-Example stage (``python -m train --config train/configs/mini.toml`` plus the
   preset's overrides), resumable.

Presets (``PRESETS``): ``cpu`` (the default) is the recipe of the embedded model, on two CPU cores
in about 45 minutes; ``gpu`` trains a wider UNet ([128, 256] channels, 4x the parameters) on twice
the scenes for twice the steps at batch 32, every stage on CUDA, planned for about 6 minutes of
an H200 (docs/miniature-world.md, "A GPU recipe"). ``--smoke`` shrinks any preset to a few scenes
and steps (a test of the command, not a model). The result is
``OUT/train/models/pbe-final.safetensors`` (EMA weights, fp16); ``python -m train.mini_verdict``
says whether it beats ``models/pbe-mini.safetensors`` on every target, and only then is it copied
there, by hand. Needs the training extra (``pip install -e ".[train]"``), checked before the
first stage.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from exemplar_core.argtypes import positive_int

from .preflight import PreflightError, check_out_dir, is_run_folder, require_training_extra

CONFIG = Path(__file__).resolve().parent / "configs" / "mini.toml"


@dataclass(frozen=True)
class Preset:
    """One recipe of the miniature model: the data, each stage's length and batch, the device
    the stages run on, and the main stage's overrides of ``train/configs/mini.toml``."""

    train_scenes: int
    test_scenes: int
    eval_cases: int
    steps: int
    vae_steps: int
    tower_steps: int
    vae_batch: int
    tower_batch: int
    device: str  # "cpu", or "auto": CUDA when there is one
    overrides: tuple[str, ...] = ()


PRESETS = {
    "cpu": Preset(4000, 200, 32, 3000, 1500, 1500, 16, 128, "cpu"),
    # A GPU runs small steps at about the same speed at a larger batch and width: the wider UNet,
    # twice the data and steps and batch 32 cost little there (not 64 px -> 128 px: 4x the
    # demo's CPU time on top of the width's 4x; docs/miniature-world.md, "A GPU recipe").
    "gpu": Preset(
        8000,
        200,
        32,
        6000,
        3000,
        3000,
        64,
        256,
        "auto",
        (
            "model.unet.block_out_channels=[128, 256]",
            "train.batch_size=32",
            "train.cpu=false",
            "train.checkpoint_every=1000",
            "data.num_workers=6",
        ),
    ),
}
# --smoke: every stage runs, on a handful of scenes and steps.
SMOKE = {
    "train_scenes": 24,
    "test_scenes": 8,
    "eval_cases": 0,
    "steps": 2,
    "vae_steps": 2,
    "tower_steps": 2,
    "vae_batch": 4,
    "tower_batch": 8,
}
SMOKE_OVERRIDES = (
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.val_steps=2",
    "data.num_workers=0",
    "data.val_count=1",
)


def resolve_preset(name: str, smoke: bool, steps, vae_steps, tower_steps) -> Preset:
    """The preset ``name``, shrunk by ``smoke``, with the given step counts (None: the
    preset's)."""
    preset = PRESETS[name]
    if smoke:
        preset = replace(preset, **SMOKE, overrides=preset.overrides + SMOKE_OVERRIDES)
    given = {"steps": steps, "vae_steps": vae_steps, "tower_steps": tower_steps}
    return replace(preset, **{k: v for k, v in given.items() if v is not None})


def stage_device(preset: Preset):
    import torch

    if preset.device == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m train.mini", description=__doc__.split("\n")[0])
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="cpu",
        help="cpu: the embedded model's recipe (default); gpu: a wider model for a few GPU minutes",
    )
    p.add_argument("--out", default="runs/mini", help="working folder (runs/mini)")
    p.add_argument(
        "--steps", type=positive_int, help="main-stage optimiser steps (cpu 3000, gpu 6000)"
    )
    p.add_argument("--vae-steps", type=positive_int, help="VAE-stage steps (cpu 1500, gpu 3000)")
    p.add_argument(
        "--tower-steps", type=positive_int, help="tower-stage steps (cpu 1500, gpu 3000)"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few scenes and steps per stage: checks the command end to end (no useful model)",
    )
    args = p.parse_args(argv)
    preset = resolve_preset(args.preset, args.smoke, args.steps, args.vae_steps, args.tower_steps)
    out = Path(args.out)
    again = f"python -m train.mini {shlex.join(argv)}".rstrip()
    try:
        require_training_extra()  # before the data, VAE and tower stages spend their minutes
        check_out_dir(out / "train", resume=is_run_folder(out / "train"))
    except PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _stages(preset, out, again)
    except KeyboardInterrupt:  # the data, VAE and tower stages (the trainer saves, then stops)
        print(
            f"\ninterrupted; finished stages are kept. Continue with:\n  {again}", file=sys.stderr
        )
        return 130


def _stages(preset: Preset, out: Path, again: str) -> int:
    from . import synthetic
    from .config import load_config
    from .signals import exit_code
    from .tower import tower_config, train_tower
    from .trainer import TrainingError, TrainingStopped, train
    from .vae import train_vae, vae_config

    timings: dict[str, float] = {}
    device = stage_device(preset)

    data = out / "data"
    if not (data / "train.jsonl").exists():
        start = time.perf_counter()
        synthetic.main(
            [
                "--out",
                str(data),
                "--train",
                str(preset.train_scenes),
                "--test",
                str(preset.test_scenes),
                "--eval",
                str(preset.eval_cases),
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
        train_vae(
            data / "train",
            out / "vae",
            vae_config("mini"),
            steps=preset.vae_steps,
            batch_size=preset.vae_batch,
            device=device,
        )
        timings["vae"] = time.perf_counter() - start

    tower_file = out / "tower" / "tower.safetensors"
    if not tower_file.exists():
        start = time.perf_counter()
        train_tower(
            data / "train.jsonl",
            out / "tower",
            tower_config("mini"),
            preset.tower_steps,
            batch_size=preset.tower_batch,
            device=device,
        )
        timings["tower"] = time.perf_counter() - start

    overrides = [
        f"out_dir={out / 'train'}",
        f"model.vae={vae_file}",
        f"model.clip={tower_file}",
        f"data.path={data / 'train.jsonl'}",
        f"train.max_steps={preset.steps}",
        *preset.overrides,
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
