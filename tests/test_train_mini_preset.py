"""train.mini's presets (cpu default, gpu, --smoke) and train.mini_verdict's target-by-target
comparison."""

from __future__ import annotations

import argparse

import pytest

from train import mini, mini_verdict
from train.config import load_config


def test_cpu_is_the_default_recipe_and_gpu_a_wider_longer_one():
    cpu = mini.resolve_preset("cpu", False, None, None, None)
    assert (cpu.train_scenes, cpu.steps, cpu.vae_steps, cpu.tower_steps) == (4000, 3000, 1500, 1500)
    assert cpu.device == "cpu" and cpu.overrides == ()
    gpu = mini.resolve_preset("gpu", False, None, None, None)
    assert gpu.steps > cpu.steps and gpu.train_scenes > cpu.train_scenes
    config = load_config(str(mini.CONFIG), list(gpu.overrides))
    assert config.model.unet["block_out_channels"] == [128, 256]
    assert config.train.batch_size == 32 and config.train.cpu is False
    assert config.data.resolution == 64  # 128 px does not pay: the demo's CPU budget


def test_smoke_shrinks_every_stage_and_explicit_steps_win():
    smoke = mini.resolve_preset("gpu", True, 3, None, None)
    assert smoke.steps == 3 and smoke.vae_steps == smoke.tower_steps == 2
    assert smoke.train_scenes == 24
    config = load_config(str(mini.CONFIG), list(smoke.overrides))
    assert config.model.unet["block_out_channels"] == [128, 256]  # still the preset's model
    assert config.train.batch_size == 4 and config.data.num_workers == 0


def test_a_wider_unet_override_builds_a_wider_random_model():
    from train.model_init import build_model

    config = load_config(str(mini.CONFIG), ["model.unet.block_out_channels=[128, 256]"])
    config.model.vae = config.model.clip = ""  # no stage outputs needed for the shape
    model = build_model(config.model, 0)
    assert list(model.unet.config.block_out_channels) == [128, 256]
    assert model.configs.unet["block_out_channels"] == [128, 256]  # exported with the file


def _pooled(colour: dict, hole: float, psnr: float = float("inf")) -> dict:
    errors = [colour[k] for k in ("0", "1", "3", "5")]
    return {
        "scales": {k: {"color_error": v} for k, v in colour.items()},
        "checks": {
            "color_error_halved_at_5": {"ratio": colour["5"] / colour["0"]},
            "fidelity_not_worse_0_to_5": {"color_errors": errors},
            "background_psnr_ge_45": {"worst_db": psnr},
        },
        "hole_fill": {"colour_error": hole},
    }


BASE = {"0": 0.5, "1": 0.38, "3": 0.26, "5": 0.255, "7": 0.28}


def test_verdict_is_replace_only_when_every_target_improves():
    better = {"0": 0.5, "1": 0.3, "3": 0.2, "5": 0.15, "7": 0.16}
    rows = mini_verdict.compare(_pooled(BASE, 0.19), _pooled(better, 0.1))
    assert all(r["better"] for r in rows) and len(rows) == len(mini_verdict.TARGETS)
    worse_hole = mini_verdict.compare(_pooled(BASE, 0.19), _pooled(better, 0.25))
    assert [r["target"] for r in worse_hole if not r["better"]] == ["hole fill colour error"]
    lower_psnr = mini_verdict.compare(_pooled(BASE, 0.19), _pooled(better, 0.1, psnr=50.0))
    assert [r["better"] for r in lower_psnr][-1] is False


def test_verdict_needs_three_fresh_worlds_and_existing_files(tmp_path, capsys):
    for bad in ("11,12", "0,1,2", "5,5,6", "a,b,c"):
        with pytest.raises(argparse.ArgumentTypeError, match="at least three different"):
            mini_verdict._worlds(bad)
    assert mini_verdict._worlds("1,2,3") == [1, 2, 3]
    code = mini_verdict.main(["--candidate", str(tmp_path / "nope.safetensors")])
    assert code == 2 and "--candidate" in capsys.readouterr().err
