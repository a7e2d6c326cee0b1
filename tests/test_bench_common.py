"""Benchmark plumbing shared by the inference and node benchmarks."""

from __future__ import annotations

import pytest
import torch

from bench.common import timed, warmup_count


def test_warmup_auto_is_one_on_an_accelerator_and_none_on_a_cpu():
    assert warmup_count("auto", torch.device("cpu")) == 0
    assert warmup_count("auto", torch.device("cuda")) == 1
    assert warmup_count("3", torch.device("cpu")) == 3
    with pytest.raises(SystemExit, match="--warmup must be 'auto' or a count >= 0"):
        warmup_count("-1", torch.device("cpu"))


def test_timed_runs_the_warmups_untimed_then_times_one_call():
    calls = []

    def edit():
        calls.append(len(calls))
        return f"result {len(calls)}"

    result, seconds, peak = timed(edit, torch.device("cpu"), "2")
    assert calls == [0, 1, 2] and result == "result 3"
    assert seconds >= 0 and peak > 0


def test_worker_argv_spells_options_as_flags():
    from bench.common import worker_argv

    argv = worker_argv(
        "bench.x",
        "side",
        resize_to=0,
        box=(1, 2, 3, 4),
        fast=True,
        slow=False,
        dtype=None,
        device="cpu",
    )
    assert argv == [
        "bench.x",
        "worker",
        "side",
        "--resize-to",
        "0",
        "--box",
        "1",
        "2",
        "3",
        "4",
        "--fast",
        "--device",
        "cpu",
    ]


def test_the_node_worker_gets_no_resize_option():
    import argparse

    from bench import inference

    args = argparse.Namespace(
        steps=2, size=64, device="cpu", dtype="auto", warmup="auto", compile="compile"
    )
    node = inference._worker_argv("node", args, 64, 64, (16, 16, 48, 48))
    editor = inference._worker_argv("editor", args, 64, 64, (16, 16, 48, 48), resize_to=32)
    assert node[:3] == ["bench.nodes", "worker", "node"] and "--resize-to" not in node
    assert editor[:3] == ["bench.inference", "worker", "editor"]
    assert editor[editor.index("--resize-to") + 1] == "32"
    assert "--compile" not in node and editor[editor.index("--compile") + 1] == "compile"


def test_inference_same_times_only_the_sides_asked_for(monkeypatch, tmp_path, capsys):
    from bench import inference

    timed_sides = []

    def fake_alternate(sides, repeats):
        timed_sides.append(list(sides))
        return {name: [{"seconds": 1.0, "peak_mb": 1.0}] for name in sides}

    monkeypatch.setattr(inference, "alternate", fake_alternate)
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    out = str(tmp_path / "r.json")
    assert inference.main(["same", "--sides", "editor", "--compile", "compile", "--out", out]) == 0
    assert inference.main(["same", "--out", out]) == 0
    assert timed_sides == [["editor"], ["editor", "diffusers", "node"]]
    with pytest.raises(SystemExit):
        inference.main(["same", "--sides", "editor,gpu"])
    assert "unknown side(s) gpu; expected some of editor,diffusers,node" in capsys.readouterr().err


def test_the_profiler_refuses_a_missing_cuda_device_with_a_clear_message():
    from bench import profile

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        profile.main(["edit", "--device", "cuda"])
