"""Where the time goes: an edit and a few training steps, profiled.

    python -m bench.profile edit   [--size 512 --steps 20 --dtype fp16]
    python -m bench.profile edit --device cpu [--size 256 --steps 10]
    python -m bench.profile train  [--architecture published --resolution 512 --batch 8]

On CUDA each reports the wall time of the measured part, the device's kernel time over it (the
busy share: what is left is launch overhead, host work and waits), the kernels that take the most
time, and every host-device synchronisation (``torch.cuda.set_sync_debug_mode``) with the line of
Python that caused it. ``edit`` profiles the edit after ``--warmup`` untimed ones (auto: one on a
GPU, none on a CPU, as ``bench.inference same`` times it) of the standalone editor, diffusers'
pipeline or the node (``--side``, set up as in ``bench.inference same``; the node needs
COMFYUI_PATH); ``train`` profiles optimiser steps of ``python -m train`` after its warm-up steps.

``--device cpu``: ``edit`` gives self-CPU time by region and by operator (``bench.regions``),
``train`` operators' self-CPU time and every host read of a tensor value with its line.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import Counter

import torch

from exemplar_core.dtypes import DTYPES

from .common import add_warmup_option, dtype_named, pick_device, warmup_count, write_report
from .regions import RegionProbe
from .train import add_run_options


class Probe:
    """Profiler plus sync detection over one window (start() ... stop())."""

    def __init__(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        self.profiler = profile(activities=activities)
        self.syncs: Counter[str] = Counter()
        self._warnings = None
        self.seconds = 0.0

    def start(self) -> None:
        torch.cuda.synchronize()
        self._warnings = warnings.catch_warnings(record=True)
        self._records = self._warnings.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        self.profiler.start()
        self._start = time.perf_counter()

    def stop(self) -> None:
        torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._start
        self.profiler.stop()
        torch.cuda.set_sync_debug_mode("default")
        for w in self._records:
            if "synchroniz" in str(w.message):
                self.syncs[f"{w.filename}:{w.lineno}"] += 1
        self._warnings.__exit__(None, None, None)

    def report(self, top: int) -> dict:
        from torch.autograd import DeviceType

        rows = []
        for event in self.profiler.key_averages():
            # device-side rows only (kernels, copies): an operator's row repeats its kernels' time
            if event.device_type != DeviceType.CUDA:
                continue
            rows.append((event.self_device_time_total, event.key, event.count))
        rows.sort(reverse=True)
        kernel_us = sum(r[0] for r in rows)
        busy = kernel_us / 1e6 / self.seconds if self.seconds else 0.0
        print(
            f"measured wall time {self.seconds:.3f} s; device time {kernel_us / 1e6:.3f} s "
            f"(busy {100 * busy:.0f}%)"
        )
        print(f"{'kernel time ms':>15}{'calls':>8}  kernel")
        for us, name, count in rows[:top]:
            print(f"{us / 1e3:>15.1f}{count:>8}  {name[:100]}")
        print(f"host-device syncs: {sum(self.syncs.values())}")
        for site, count in self.syncs.most_common():
            print(f"  {count:>5} x {site}")
        return {
            "seconds": self.seconds,
            "kernel_seconds": kernel_us / 1e6,
            "busy_share": busy,
            "top_kernels": [{"ms": us / 1e3, "calls": c, "name": n} for us, n, c in rows[:top]],
            "syncs": dict(self.syncs),
        }


def _require_cuda(device: torch.device) -> None:
    if device.type != "cuda" or not torch.cuda.is_available():
        found = "none is available" if device.type == "cuda" else f"got --device {device}"
        raise SystemExit(f"error: bench.profile needs a CUDA device (--device cuda); {found}")


def cmd_edit(args) -> dict:
    from .inference import diffusers_edit, editor_edit
    from .nodes import NODE_SAMPLER, node_edit

    device = pick_device(args.device)
    if device.type != "cpu":
        _require_cuda(device)
    size = args.size
    args.width = args.height = size
    args.box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    args.resize_to, (args.sampler, args.scheduler) = 0, NODE_SAMPLER  # as bench.nodes runs it
    makers = {"editor": editor_edit, "diffusers": diffusers_edit, "node": node_edit}
    edit, _ = makers[args.side](args)
    for _ in range(warmup_count(args.warmup, device)):
        edit()
    probe = RegionProbe() if device.type == "cpu" else Probe()
    probe.start()
    edit()
    probe.stop()
    return {
        "benchmark": "profile_edit",
        "side": args.side,
        "device": device.type,
        "size": size,
        "steps": args.steps,
        "dtype": str(dtype_named(args.dtype, device)).removeprefix("torch."),
        "warmup": warmup_count(args.warmup, device),
        **probe.report(args.top),
    }


# Tensor methods that hand a value to Python: on an accelerator each waits for the device queue.
HOST_READS = frozenset(
    ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")
)


class HostReads:
    """Every read of a tensor's value into Python (``HOST_READS``) over one window, by the line
    of the project's code that made it (the first caller outside torch and this file). On an
    accelerator such a read of a device tensor is a sync; on a CPU nothing waits, but the same
    lines would, so the CPU run finds them too (with ``device_only``, reads of CPU tensors, such
    as the batch's cache keys, are left out)."""

    def __init__(self, device_only: bool) -> None:
        self.device_only = device_only
        self.sites: Counter[str] = Counter()
        self._mode = None

    def start(self) -> None:
        from torch.overrides import TorchFunctionMode

        reads = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in HOST_READS and args and isinstance(args[0], torch.Tensor):
                    if not (reads.device_only and args[0].device.type == "cpu"):
                        reads.sites[f"{name} at {_caller()}"] += 1
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()

    def stop(self) -> None:
        self._mode.__exit__(None, None, None)


def _caller() -> str:
    """folder/file:line of the innermost frame outside torch and this file."""
    import sys
    from pathlib import PurePath

    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        parts = PurePath(name).parts
        if name != __file__ and "torch" not in parts:
            return f"{'/'.join(parts[-2:])}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "?"


class CpuProbe:
    """The CPU counterpart of ``Probe``: torch.profiler's self-CPU time by operator over the
    window, and the host reads of tensor values (``HostReads``) with their lines."""

    def __init__(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.profiler = profile(activities=[ProfilerActivity.CPU])
        self.reads = HostReads(device_only=False)
        self.seconds = 0.0

    def start(self) -> None:
        self.profiler.start()
        self.reads.start()
        self._start = time.perf_counter()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._start
        self.reads.stop()
        self.profiler.stop()

    def report(self, top: int) -> dict:
        rows = sorted(
            ((e.self_cpu_time_total, e.key, e.count) for e in self.profiler.key_averages()),
            reverse=True,
        )
        op_us = sum(r[0] for r in rows)
        print(
            f"measured wall time {self.seconds:.3f} s (with the profiler and the read finder on); "
            f"operators' self-CPU time {op_us / 1e6:.3f} s"
        )
        print(f"{'self CPU ms':>15}{'calls':>8}  operator")
        for us, name, count in rows[:top]:
            print(f"{us / 1e3:>15.1f}{count:>8}  {name[:100]}")
        reads = self.reads.sites
        print(
            f"host reads of tensor values: {sum(reads.values())} (each a sync if the tensor "
            "were on an accelerator)"
        )
        for site, count in reads.most_common():
            print(f"  {count:>5} x {site}")
        return {
            "seconds": self.seconds,
            "op_seconds": op_us / 1e6,
            "top_ops": [{"ms": us / 1e3, "calls": c, "name": n} for us, n, c in rows[:top]],
            "host_reads": dict(reads),
        }


def cmd_train(args) -> dict:
    """Optimiser steps of the trainer after its warm-up: on CUDA the ``Probe`` (kernel time,
    syncs); with ``--device cpu`` the ``CpuProbe`` (operators' CPU time, host reads)."""
    from .train import Window, run_trainer

    device = pick_device(args.device)
    if device.type == "cpu":
        probe = CpuProbe()
    else:
        _require_cuda(device)
        probe = Probe()
    window = Window(args.warmup, args.steps, device, on_start=probe.start, on_stop=probe.stop)
    run_trainer(args, False, args.checkpointing, window)
    report = probe.report(args.top)
    report["samples_per_s"] = args.batch * args.steps / probe.seconds
    print(f"{report['samples_per_s']:.1f} samples/s under the profiler")
    return {"benchmark": "profile_train", "settings": vars(args), **report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("edit", help="a warm edit: editor, diffusers or the node")
    e.add_argument("--side", default="editor", choices=("editor", "diffusers", "node"))
    e.add_argument("--size", type=int, default=512)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument(
        "--dtype", default="auto", choices=("auto", *DTYPES), help="auto: fp16 on CUDA, fp32 on CPU"
    )
    e.add_argument("--out", default="out/bench/profile_edit.json")
    e.add_argument("--device", default="cuda", help="cuda, or cpu for the CPU report")
    add_warmup_option(e)
    t = sub.add_parser(
        "train", help="optimiser steps of the trainer (--device cpu: CPU time and host reads)"
    )
    add_run_options(t, "published", 512, 8)  # bench.train's options; here the profiled steps
    t.set_defaults(steps=5, precision="bf16", workers=4, device="cuda")
    t.add_argument("--checkpointing", action="store_true")
    t.add_argument("--out", default="out/bench/profile_train.json")
    for p in (e, t):
        p.add_argument("--top", type=int, default=15, help="kernels (CPU: operators) listed")
    args = parser.parse_args(argv)
    report = cmd_edit(args) if args.command == "edit" else cmd_train(args)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
