"""Subject mode: prior samples from the frozen model, concatenated subject + prior batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from train_support import make_images, write_jsonl

from train.config import config_from_dict
from train.trainer import train

pytestmark = pytest.mark.slow


def _config(tmp_path, num_prior: int) -> dict:
    subject = write_jsonl(tmp_path / "subject.jsonl", make_images(tmp_path, 3, seed=5))
    exemplars = tmp_path / "class"
    exemplars.mkdir(exist_ok=True)
    for i in range(2):
        Image.new("RGB", (40, 30), (200, 40 * i, 30)).save(exemplars / f"dog{i}.png")
    return {
        "out_dir": str(tmp_path / "run"),
        "model": {"init": "random", "architecture": "tiny"},
        "data": {"resolution": 64, "num_workers": 0, "min_area": 0.0},
        "train": {
            "batch_size": 2,
            "max_steps": 2,
            "warmup_steps": 0,
            "validate_every": 0,
            "val_steps": 1,
            "gradient_checkpointing": False,
            "export_dtype": "fp32",
            "cpu": True,
        },
        "subject": {
            "enabled": True,
            "path": str(subject),
            "repeats": 2,
            "class_exemplars": str(exemplars),
            "num_prior": num_prior,
            "prior_steps": 2,
        },
    }


def test_subject_mode_generates_prior_and_trains_on_both(tmp_path):
    config = config_from_dict(_config(tmp_path, num_prior=4))
    summary = train(config)
    prior = tmp_path / "run" / "prior"
    manifest = [json.loads(line) for line in (prior / "prior.jsonl").read_text().splitlines()]
    assert len(manifest) == 4
    generated = Image.open(prior / manifest[0]["image"])
    assert generated.size == (64, 64)
    edited = (np.asarray(Image.open(prior / manifest[0]["mask"])) > 127).sum()
    assert 0 < edited < 64 * 64  # a real edit region
    # Each micro-batch is subject (2) + prior (2) samples.
    assert summary["samples"] == 2 * (2 + 2)
    assert (tmp_path / "run" / "models" / "pbe-lora-final.safetensors").is_file()  # LoRA default

    # A second run reuses the stored prior samples instead of generating them again.
    stamp = (prior / manifest[0]["image"]).stat().st_mtime_ns
    again = _config(tmp_path, num_prior=4)
    again["out_dir"] = str(tmp_path / "run2")
    again["subject"]["prior_dir"] = str(prior)
    train(config_from_dict(again))
    assert (prior / manifest[0]["image"]).stat().st_mtime_ns == stamp
    assert len((prior / "prior.jsonl").read_text().splitlines()) == 4


def test_subject_mode_without_prior_trains_on_the_subject_alone(tmp_path):
    config = config_from_dict(_config(tmp_path, num_prior=0))
    summary = train(config)
    assert summary["samples"] == 2 * 2
    assert not (tmp_path / "run" / "prior").exists()


def test_class_exemplars_can_be_crops_from_a_box_dataset(tmp_path):
    from train.readers import BoxFilter, read_dataset
    from train.subject import ExemplarSource

    entries = make_images(tmp_path, 2)
    entries[1]["labels"] = ["cat"]
    entries[0]["labels"] = ["dog"]
    path = write_jsonl(tmp_path / "classes.jsonl", entries)
    records, _ = read_dataset("jsonl", path, "", BoxFilter(0.0, 1.0, classes=("dog",)))
    source = ExemplarSource(records=records, pad=0)
    assert len(source) == 1
    x0, y0, x1, y1 = entries[0]["boxes"][0]
    assert source.get(0).shape == (3, y1 - y0, x1 - x0)
