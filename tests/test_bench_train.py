"""The training benchmark's workers run end to end (tiny model, a few steps) and time a window."""

from __future__ import annotations

import argparse

import pytest

from bench import train as bench_train


def _args(tmp_path, **extra):
    values = dict(
        architecture="tiny",
        resolution=32,
        batch=2,
        steps=2,
        warmup=1,
        device="cpu",
        precision="no",
        workers=0,
        scenes=12,
        checkpointing=False,
        set=[],
    )
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
    runs = iter(
        [
            {"samples_per_s": 4.0, "peak_mb": 1000.0},
            {"samples_per_s": 3.0, "peak_mb": 550.0},
        ]
    )
    monkeypatch.setattr(
        "bench.train.alternate", lambda sides, repeats: {name: [next(runs)] for name in sides}
    )
    args = argparse.Namespace(**{**vars(_args(tmp_path)), "repeats": 1, "batches": []})
    report = bench_train.cmd_checkpointing(args)
    assert report["memory_ratio"] == pytest.approx(0.55)
    assert report["by_batch"]["2"]["speed_ratio"] == pytest.approx(0.75)
    assert report["settings"]["architecture"] == "tiny"


def test_checkpointing_runs_each_batch_with_and_without_and_gives_both_ratios(
    tmp_path, monkeypatch, capsys
):
    peaks = {"plain b8": 1000.0, "checkpointing b8": 800.0, "plain b32": 4000.0}
    peaks["checkpointing b32"] = 1600.0
    seen = {}

    def fake(sides, repeats):
        seen.update(sides)
        return {
            n: [{"samples_per_s": 8.0 if "plain" in n else 6.0, "peak_mb": peaks[n]}] for n in sides
        }

    monkeypatch.setattr("bench.train.alternate", fake)
    args = argparse.Namespace(**{**vars(_args(tmp_path)), "repeats": 1, "batches": [8, 32]})
    report = bench_train.cmd_checkpointing(args)
    assert list(seen) == ["plain b8", "checkpointing b8", "plain b32", "checkpointing b32"]
    assert "--checkpointing" in seen["checkpointing b32"] and "32" in seen["checkpointing b32"]
    assert "--checkpointing" not in seen["plain b32"]
    assert report["by_batch"]["8"]["memory_ratio"] == pytest.approx(0.8)
    assert report["by_batch"]["32"]["memory_ratio"] == pytest.approx(0.4)
    assert report["by_batch"]["32"]["speed_ratio"] == pytest.approx(0.75)
    assert "batch 32: peak memory with/without checkpointing 0.40" in capsys.readouterr().out


def test_batches_option_refuses_anything_but_positive_whole_numbers():
    assert bench_train.positive_int_list("8,32") == [8, 32]
    for bad in ("8,x", "0,8", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="whole numbers >= 1"):
            bench_train.positive_int_list(bad)


def test_compiled_and_inline_checksum_sides_are_reported_against_ours(tmp_path, monkeypatch):
    rates = {"ours": 10.0, "ours_compiled": 15.0, "ours_inline_checksum": 9.0}
    monkeypatch.setattr(
        "bench.train.alternate",
        lambda sides, repeats: {n: [{"samples_per_s": rates[n], "peak_mb": 2.0}] for n in sides},
    )
    monkeypatch.setattr(
        bench_train, "step_flops", lambda *a: {"frozen": 1, "trained": 2, "total": 3}
    )
    sides = "ours,ours_compiled,ours_inline_checksum"
    args = argparse.Namespace(
        **{**vars(_args(tmp_path)), "repeats": 1, "peak_tflops": 0.0, "sides": sides}
    )
    report = bench_train.cmd_throughput(args)
    assert report["ratio_to_ours"]["ours_compiled"]["samples_per_s"] == pytest.approx(1.5)
    assert report["ratio_to_ours"]["ours_inline_checksum"]["samples_per_s"] == pytest.approx(0.9)


def test_the_compiled_side_sets_train_compile_and_only_the_checksum_side_sums_inline(
    tmp_path, monkeypatch
):
    runs = []
    monkeypatch.setattr(
        bench_train,
        "run_trainer",
        lambda args, ema, ckpt, window, inline_checksum=False: runs.append(
            (args.set, inline_checksum)
        ),
    )
    args = _args(tmp_path, set=["train.lr=1e-4"])
    for side in ("ours", "ours_compiled", "ours_inline_checksum"):
        bench_train.worker_ours(args, ema=False, checkpointing=False, side=side)
    assert runs == [
        (["train.lr=1e-4"], False),
        (["train.lr=1e-4", "train.compile=true"], False),
        (["train.lr=1e-4"], True),
    ]
    assert args.set == ["train.lr=1e-4"]  # the caller's options are not changed


def test_step_flops_are_per_sample_and_split_into_frozen_and_trained():
    one = bench_train.step_flops("tiny", 32, 1)
    two = bench_train.step_flops("tiny", 32, 2)
    assert one["frozen"] > 0 and one["trained"] > 0
    assert one["total"] == pytest.approx(one["frozen"] + one["trained"])
    assert two == pytest.approx(one)  # per sample: the same at any batch


def test_throughput_reports_mfu_from_the_given_peak(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "bench.train.alternate",
        lambda sides, repeats: {
            name: [{"samples_per_s": 10.0 if name == "ours" else 8.0, "peak_mb": 1.0}]
            for name in sides
        },
    )
    monkeypatch.setattr(
        bench_train, "step_flops", lambda *a: {"frozen": 1e12, "trained": 2e12, "total": 3e12}
    )
    args = argparse.Namespace(
        **{**vars(_args(tmp_path)), "repeats": 1, "peak_tflops": 100.0, "sides": "ours,minimal"}
    )
    report = bench_train.cmd_throughput(args)
    assert report["throughput_ratio"] == pytest.approx(1.25)
    assert report["mfu"] == pytest.approx({"ours": 0.3, "minimal": 0.24})


def test_throughput_without_a_known_peak_gives_no_mfu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "bench.train.alternate",
        lambda sides, repeats: {name: [{"samples_per_s": 10.0, "peak_mb": 1.0}] for name in sides},
    )
    args = argparse.Namespace(
        **{**vars(_args(tmp_path)), "repeats": 1, "peak_tflops": 0.0, "sides": "ours"}
    )
    report = bench_train.cmd_throughput(args)
    assert "mfu" not in report and "throughput_ratio" not in report
    assert "pass --peak-tflops" in capsys.readouterr().out


def test_throughput_refuses_unknown_sides(tmp_path):
    args = argparse.Namespace(
        **{**vars(_args(tmp_path)), "repeats": 1, "peak_tflops": 0.0, "sides": "ours,theirs"}
    )
    with pytest.raises(SystemExit, match="theirs"):
        bench_train.cmd_throughput(args)


def test_config_overrides_reach_the_trainer_sides_only(tmp_path):
    args = _args(tmp_path, set=["train.compile=true"])
    assert bench_train._worker_argv("ours", args)[-2:] == ["--set", "train.compile=true"]
    assert "--set" not in bench_train._worker_argv("minimal", args)


def test_speed_options_reach_the_trainer(tmp_path, monkeypatch):
    import torch

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    sums = []
    original = bench_train.thread_checksum
    monkeypatch.setattr(
        bench_train, "thread_checksum", lambda b: sums.append((original(b), b["image_sum"]))
    )
    args = _args(tmp_path, set=["train.compile=true", "train.channels_last=true"])
    result = bench_train.worker_ours(args, False, False, side="ours_inline_checksum")
    assert result["samples_per_s"] > 0
    assert [type(m).__name__ for m in compiled] == ["UNet2DConditionModel"]
    # the old on-thread checksum ran every step and equals the workers' one
    assert len(sums) == args.warmup + args.steps + 1
    assert all(ours == pytest.approx(workers) for ours, workers in sums)


def test_window_hooks_run_at_its_edges():
    import torch

    events = []
    window = bench_train.Window(
        warmup=2,
        steps=3,
        device=torch.device("cpu"),
        on_start=lambda: events.append(("start", window.calls)),
        on_stop=lambda: events.append(("stop", window.calls)),
    )
    for _ in range(7):
        window.tick()
    assert events == [("start", 3), ("stop", 6)]
    assert window.result(batch=2)["samples_per_s"] > 0


# -- memory ------------------------------------------------------------------------------------


def test_saved_tensors_count_what_a_linear_layer_saves_and_leave_out_its_weight():
    import torch

    layer = torch.nn.Linear(8, 16, bias=False)
    weight = {layer.weight.untyped_storage()._cdata}

    def saved(x, autocast: bool) -> int:
        counter = bench_train.SavedTensors(weight)
        with counter.hooks(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            layer(x)
        return counter.bytes

    x = torch.randn(4, 8)
    assert saved(x, autocast=False) == 4 * 8 * 4  # the fp32 input; the weight is a parameter
    assert saved(x, autocast=True) == 4 * 8 * 2  # its bf16 copy
    # An input that needs a gradient also keeps the bf16 copy of the weight.
    assert saved(x.requires_grad_(), autocast=True) == 4 * 8 * 2 + 16 * 8 * 2


def test_optimizer_state_bytes_match_the_hand_count_for_each_optimizer():
    import torch

    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(64, 96), (64, 96), (10,), (8, 4, 3, 3)]]
    values = sum(p.numel() for p in params)
    # AdamW: two fp32 moments per value and a 4-byte step counter per tensor.
    assert bench_train.optimizer_state_bytes(params, "adamw") == 8 * values + 4 * 4
    # Adafactor: a step counter per tensor; a matrix keeps a row and a column vector
    # (the last two dimensions), a vector its full second moment.
    adafactor = 4 * 4 + 2 * 4 * (64 + 96) + 4 * 10 + 4 * (8 * 4 * (3 + 3))
    assert bench_train.optimizer_state_bytes(params, "adafactor") == adafactor
    # 8-bit AdamW: one byte per moment and an fp32 scale per block of 256 values for the
    # 6144-value matrices (bitsandbytes quantises from 4096 values), fp32 moments for the small
    # ones, plus the two 256-entry quantisation maps once.
    eight = 2 * 2 * (6144 + 4 * 6144 // 256) + 8 * (10 + 288) + 2 * 256 * 4
    assert bench_train.optimizer_state_bytes(params, "adamw8bit") == eight


@pytest.mark.slow
def test_memory_breakdown_of_the_tiny_model_matches_its_parameters(capsys):
    from exemplar_core.model import ModelConfigs, PaintByExampleModel
    from train.config import LoraSection
    from train.lora import exemplar_base_state, inject_lora, lora_state
    from train.trainer import trainable_parameters

    args = argparse.Namespace(
        arch="tiny", size=64, batch=2, lora_rank=4, margin=1.0, device="cpu", out=""
    )
    report = bench_train.cmd_memory(args)["configurations"]
    model = PaintByExampleModel(ModelConfigs.named("tiny"))
    trained = trainable_parameters(model)
    count = sum(p.numel() for p in trained)
    frozen = sum(p.numel() for p in model.parameters()) - count
    row = report["full AdamW"]
    assert row["trained_parameters"] == count
    assert row["params_trained"] == {"float32": 4 * count}
    assert row["params_frozen"] == {"float32": 4 * frozen}
    assert row["gradients"] == row["ema"] == 4 * count
    assert row["optimizer_state"] == 8 * count + 4 * len(trained)
    off, on = row["activations"]["no_checkpointing"], row["activations"]["checkpointing"]
    assert 0 < on["peak"] < off["peak"] and on["largest_block"] > 0
    assert report["full AdamW8bit"]["optimizer_state"] < row["optimizer_state"] / 2
    totals = {(t["checkpointing"], t["ema"]): t["total"] for t in row["totals"]}
    assert totals[(False, "device")] - totals[(False, "cpu")] == row["ema"]
    assert row["step_temporaries"] == 4 * count  # torch's foreach AdamW: one fp32 copy
    assert report["full AdamW8bit"]["step_temporaries"] == 0
    static = 4 * (count + frozen) + 12 * count + 4 * len(trained)
    assert totals[(False, "cpu")] == static + max(off["peak"], 4 * count)
    lora = report["LoRA AdamW"]
    adapted = PaintByExampleModel(ModelConfigs.named("tiny"))
    section = LoraSection(rank=4, alpha=4.0)
    lora_params = inject_lora(adapted, section)
    lora_count = sum(p.numel() for p in lora_params)
    assert lora["trained_parameters"] == lora_count and 0 < lora_count < count
    assert lora["optimizer_state"] == 8 * lora_count + 4 * len(lora_params)
    assert sum(lora["params_frozen"].values()) == 4 * (
        sum(p.numel() for p in adapted.parameters()) - lora_count
    )
    # The LoRA file's size from the counts equals the tensors lora_state writes (fp16, fp32 alphas).
    tensors = lora_state(adapted, section, exemplar_base_state(adapted, section))
    written = sum(t.numel() * (4 if k.endswith(".alpha") else 2) for k, t in tensors.items())
    assert report["lora_file"]["lora_fp16"] == written
    out = capsys.readouterr().out
    assert "fits in" in out and "no GPU here" in out


@pytest.mark.parametrize(("method", "optimizer"), [("full", "adamw8bit"), ("lora", "adamw")])
def test_gpu_peak_runs_a_real_step_and_reads_no_peak_on_a_cpu(method, optimizer):
    args = argparse.Namespace(arch="tiny", size=64, batch=1, lora_rank=4, device="cpu")
    assert bench_train.gpu_peak(args, method, optimizer, True, "cpu") is None


@pytest.mark.parametrize("option", ["--size", "--batch", "--lora-rank"])
def test_memory_refuses_a_size_below_one_before_any_work(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_train.main(["memory", option, "0"])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err
