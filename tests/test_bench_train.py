"""The training benchmark's workers run end to end (tiny model, a few steps) and time a window."""

from __future__ import annotations

import argparse

import pytest

from bench import train as bench_train


def _args(tmp_path, **extra):
    values = dict(architecture="tiny", resolution=32, batch=2, steps=2, warmup=1, device="cpu",
                  precision="no", workers=0, scenes=12, checkpointing=False)  # fmt: skip
    values.update(extra)
    return argparse.Namespace(**values)


@pytest.fixture(autouse=True)
def _scenes_in_tmp(tmp_path, monkeypatch):
    original = bench_train.make_scenes
    monkeypatch.setattr(
        bench_train, "make_scenes", lambda res, count, root=None: original(res, count, tmp_path)
    )


@pytest.mark.parametrize("side", ["ours", "ours_ema", "minimal"])
def test_training_workers_time_the_window_after_warmup(tmp_path, side):
    args = _args(tmp_path)
    if side == "minimal":
        result = bench_train.worker_minimal(args)
    else:
        result = bench_train.worker_ours(args, ema=side == "ours_ema", checkpointing=False)
    assert result["samples_per_s"] > 0 and result["step_s"] > 0
    assert result["peak_mb"] > 0


def test_window_refuses_a_run_too_short_to_measure():
    import torch

    window = bench_train.Window(warmup=2, steps=3, device=torch.device("cpu"))
    for _ in range(4):
        window.tick()
    with pytest.raises(RuntimeError, match="only 4 steps ran"):
        window.result(batch=1)


def test_data_pipeline_rate_and_cores_per_gpu(tmp_path, capsys):
    args = argparse.Namespace(resolution=64, samples=6, scenes=8, gpu_rate=100.0)
    report = bench_train.cmd_data(args)
    assert report["samples_per_s_per_core"] > 0
    assert report["cores_per_gpu"] == pytest.approx(100.0 / report["samples_per_s_per_core"])
    assert "cores to feed one GPU" in capsys.readouterr().out


def test_checkpointing_command_reports_the_memory_ratio(tmp_path, monkeypatch):
    runs = iter([
        {"samples_per_s": 4.0, "peak_mb": 1000.0},
        {"samples_per_s": 3.0, "peak_mb": 550.0},
    ])  # fmt: skip
    monkeypatch.setattr("bench.train.alternate", lambda sides, repeats: {
        name: [next(runs)] for name in sides})  # fmt: skip
    args = argparse.Namespace(**{**vars(_args(tmp_path)), "repeats": 1})
    report = bench_train.cmd_checkpointing(args)
    assert report["memory_ratio"] == pytest.approx(0.55)
    assert report["settings"]["architecture"] == "tiny"
