"""Shared benchmark plumbing: isolated worker processes, alternating runs, reports."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from exemplar_core.dtypes import DTYPES
from exemplar_core.files import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
HOST_DIR = REPO / "tests" / "host"


def host_harness():
    """tests/host/pbe_host.py: the host tests' launcher (ComfyUI with this pack, as a user's
    install has it), which the ComfyUI benchmarks reuse."""
    if str(HOST_DIR) not in sys.path:
        sys.path.insert(0, str(HOST_DIR))
    import pbe_host

    return pbe_host


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: VmHWM), so a later reading covers only what follows.
    Returns False where the kernel does not support it (the reading then covers the whole run)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size in MiB since start or the last ``reset_peak_rss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; any other name as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_count(value: str, device: torch.device) -> int:
    """Untimed runs before the timed one: ``auto`` is 1 on an accelerator (its first run pays
    for kernel selection, library loading and autotuning, which a user pays once per session)
    and 0 on a CPU (the figures there have always been cold, first-edit times)."""
    if value == "auto":
        return 0 if device.type == "cpu" else 1
    count = int(value)
    if count < 0:
        raise SystemExit(f"error: --warmup must be 'auto' or a count >= 0, not {value!r}")
    return count


def add_warmup_option(p: argparse.ArgumentParser) -> None:
    """The edit workers' and commands' ``--warmup`` (see ``warmup_count``)."""
    p.add_argument(
        "--warmup",
        default="auto",
        help="untimed edits in each worker before the timed one (auto: 1 on a GPU, 0 on a CPU)",
    )


def dtype_named(name: str, device: torch.device) -> torch.dtype:
    """``auto`` (fp16 on CUDA, else fp32), ``fp32``, ``fp16`` or ``bf16``."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def timed(edit: Callable[[], Any], device: torch.device, warmup: str) -> tuple[Any, float, float]:
    """``warmup`` untimed calls of edit(), then one timed: (result, seconds, peak MB)."""
    for _ in range(warmup_count(warmup, device)):
        edit()
    reset_peak_memory(device)
    start = time.perf_counter()
    result = edit()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start, peak_memory_mb(device)


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc ``malloc_trim``), so that a peak
    RSS window starts from live memory, not from what setup freed but the allocator kept."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak_memory(device: torch.device) -> None:
    """Start a peak-memory window (RSS on CPU, max allocated on CUDA), after releasing freed
    memory (``release_freed_memory``)."""
    release_freed_memory()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()


def peak_memory_mb(device: torch.device) -> float:
    """Peak RSS on CPU, max allocated on CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def materialise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give a meta-device module real CPU storage with its layers' own default initialisation,
    deterministically (the same seed gives the same weights in every process)."""
    module.to_empty(device="cpu")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if hasattr(sub, "reset_parameters") and callable(sub.reset_parameters):
                sub.reset_parameters()
        for name, param in module.named_parameters():
            # parameters no layer owns a reset for (class tokens, position tables, vectors)
            if name.endswith(("class_embedding", "positional_embedding", "learnable_vector")):
                param.normal_(0.0, 0.02)
    torch.random.set_rng_state(generator_state)
    return module


def worker_argv(module: str, side: str, **options) -> list[str]:
    """``[module, "worker", side, --name value ...]`` for ``python -m``: an option named
    ``resize_to`` becomes ``--resize-to``; True gives the bare flag, False and None leave it out,
    a list or tuple gives one value after another."""
    argv = [module, "worker", side]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def run_worker(argv: Sequence[str], timeout: float = 3600) -> dict:
    """Run ``python -m <argv>`` in a fresh process; its last stdout line is a JSON result."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(argv)} failed:\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(
            f"worker {' '.join(argv)} printed no JSON result:\n{proc.stdout[-2000:]}"
        )
    return json.loads(lines[-1])


def alternate(sides: dict[str, Sequence[str]], repeats: int) -> dict[str, list[dict]]:
    """Run each side's worker ``repeats`` times, alternating A, B, A, B... (drift hits both)."""
    results: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, argv in sides.items():
            started = time.perf_counter()
            result = run_worker(argv)
            result.setdefault("process_seconds", time.perf_counter() - started)
            results[name].append(result)
            print(f"  {name}: {json.dumps({k: _round(v) for k, v in result.items()})}", flush=True)
    return results


def _round(value):
    return round(value, 3) if isinstance(value, float) else value


def summarise(results: dict[str, list[dict]], keys: Sequence[str]) -> dict[str, dict]:
    """Median of each key per side."""
    return {
        name: {k: statistics.median(r[k] for r in runs) for k in keys if all(k in r for r in runs)}
        for name, runs in results.items()
    }


def print_table(summary: dict[str, dict], keys: Sequence[str], baseline: str | None = None) -> None:
    names = list(summary)
    header = f"{'side':<16}" + "".join(f"{k:>18}" for k in keys)
    print(header)
    for name in names:
        print(f"{name:<16}" + "".join(f"{summary[name].get(k, float('nan')):>18.3f}" for k in keys))
    if baseline and baseline in summary:
        for name in names:
            if name == baseline:
                continue
            ratios = "".join(
                f"{summary[name][k] / summary[baseline][k]:>18.3f}"
                if summary[baseline].get(k)
                else f"{'n/a':>18}"
                for k in keys
            )
            print(f"{name + '/' + baseline:<16}" + ratios)


def write_report(path: str | os.PathLike[str], report: dict, *, replace: bool = True) -> Path:
    """``report`` as JSON after the machine and the time, its folder created if missing;
    ``replace=False``: an existing file is never replaced (DestinationError)."""
    out = Path(path)
    report = {"machine": machine(), "written": time.strftime("%Y-%m-%d %H:%M:%S"), **report}
    atomic_write_text(out, json.dumps(report, indent=2), overwrite=replace)
    print(f"wrote {out}")
    return out
