"""Tiny on-disk datasets and configs for the trainer tests (no network, CPU, seconds)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from train.checkpoints import checkpoint_name
from train.config import TrainConfig, config_from_dict


def make_images(folder: Path, count: int, size: int = 64, seed: int = 0) -> list[dict]:
    """``count`` PNGs of a coloured rectangle on a noisy background; returns JSONL entries."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    entries = []
    for i in range(count):
        height = size if i % 3 else size - 16  # some landscape images
        array = np.random.default_rng(seed + i).integers(0, 60, (height, size, 3), dtype=np.uint8)
        w, h = rng.randint(16, 30), rng.randint(16, min(30, height - 10))
        x0, y0 = rng.randint(2, size - w - 2), rng.randint(2, height - h - 2)
        array[y0 : y0 + h, x0 : x0 + w] = [rng.randint(120, 255) for _ in range(3)]
        name = f"img{i:03d}.png"
        Image.fromarray(array).save(folder / name)
        entries.append({"image": name, "boxes": [[x0, y0, x0 + w, y0 + h]]})
    return entries


def write_jsonl(path: Path, entries: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n", encoding="utf-8")
    return path


def tiny_config(out_dir: Path, data_path: Path, **sections) -> TrainConfig:
    """A tiny random model on 64 px pairs; ``sections`` update the [model]/[data]/[train] tables."""
    data = {
        "out_dir": str(out_dir),
        "model": {"init": "random", "architecture": "tiny"},
        "data": {
            "format": "jsonl",
            "path": str(data_path),
            "resolution": 64,
            "val_count": 1,
            "num_workers": 0,
            "min_area": 0.0,
        },
        "train": {
            "batch_size": 2,
            "max_steps": 4,
            "warmup_steps": 0,
            "lr": 1e-3,
            "gradient_checkpointing": False,
            "checkpoint_every": 1000,
            "validate_every": 0,
            "val_steps": 2,
            "log_every": 1,
            "export_dtype": "fp32",
            "ema_decay": 0.9,
            "cpu": True,
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


def checkpoint_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    """The trained weights of run ``out``'s checkpoint ``step``, with its EMA under ``ema.``."""
    folder = out / "checkpoints" / checkpoint_name(step)
    weights = load_file(str(folder / "trainable.safetensors"))
    weights.update({f"ema.{k}": v for k, v in load_file(str(folder / "ema.safetensors")).items()})
    return weights


def assert_same_weights(a: dict, b: dict) -> None:
    """Same keys, bit-identical tensors."""
    assert a.keys() == b.keys()
    for key in b:
        assert torch.equal(a[key], b[key]), key


def kill_in_micro_batch(monkeypatch, config: TrainConfig, micro_batch: int, latest: str) -> None:
    """Run ``config`` until a simulated kill in micro-batch ``micro_batch`` (counted from the
    run's start) and check that ``checkpoints/latest`` then names ``latest``; the caller resumes
    the run (``train(config, resume=True)``)."""
    import pytest

    from train.trainer import Trainer, train

    real_step = Trainer.training_step

    def killed(self, batch):
        if self.consumed == micro_batch:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "training_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert (Path(config.out_dir) / "checkpoints" / "latest").read_text() == latest
    monkeypatch.setattr(Trainer, "training_step", real_step)
