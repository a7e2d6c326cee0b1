"""Batched edit throughput: ``Editor.edit_batch`` at batch sizes 1, 4, 8 (edits per second).

Each batch size runs in a fresh worker process that builds the model, warms up with one untimed
batch, then times ``edit_batch`` over the same ``--jobs`` edits (one processing size, a seed
each, so every job shares one UNet batch up to the batch size). Sides alternate across repeats;
the report gives the median edits/s, seconds and peak memory (RSS on CPU, max allocated on GPU)
per batch size, and each one's throughput over the smallest's (the target: batch 8 >= 1.5x
batch 1 on a GPU).

    python -m bench.batch [--architecture mini|published] [--sizes 1,4,8] [--jobs 8] [--steps 10]

``mini``: the embedded model (models/pbe-mini.safetensors) at its native size. ``published``:
the SD1.5-sized architecture with deterministic random weights (``bench.inference.build_model``)
at 512 px unless ``--size`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from exemplar_core.argtypes import non_negative_int, positive_int
from exemplar_core.dtypes import DTYPES

from .common import (
    REPO,
    alternate,
    dtype_named,
    peak_memory_mb,
    pick_device,
    print_table,
    reset_peak_memory,
    summarise,
    worker_argv,
    write_report,
)

ARCHITECTURES = ("mini", "published")
MINI_MODEL = REPO / "models" / "pbe-mini.safetensors"
KEYS = ("edits_per_s", "seconds", "peak_mb")


def batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,4,8"`` -> (1, 4, 8): whole numbers >= 1, each once, in the order given."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(
            f"batch sizes must be distinct whole numbers >= 1 separated by commas, got {text!r}"
        )
    return sizes


def build_model(architecture: str):
    """The benchmark's model: the embedded miniature one, or the published architecture."""
    if architecture == "mini":
        from exemplar_core.checkpoint import load_model

        return load_model(MINI_MODEL)
    from .inference import build_model as build_published

    return build_published()


def make_requests(jobs: int, size: int, steps: int):
    """``jobs`` edits of one size-``size`` square source with a centred mask, each with its own
    random source, exemplar and seed (PNDM, similarity 5: the published model's defaults)."""
    from exemplar_core.editor import EditRequest, EditSettings

    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    requests = []
    for seed in range(jobs):
        settings = EditSettings(steps=steps, similarity=5.0, seed=seed, size=size)
        source = torch.rand(1, 3, size, size, generator=g)
        exemplar = torch.rand(1, 3, 224, 224, generator=g)
        requests.append(EditRequest(source, mask, exemplar, settings))
    return requests


def worker(args) -> dict:
    """One batch size in this process: build, warm up, time ``edit_batch`` over the jobs."""
    from exemplar_core.editor import Editor

    device = pick_device(args.device)
    model = build_model(args.architecture)
    size = args.size or model.configs.native_size
    editor = Editor(model, device=device, dtype=dtype_named(args.dtype, device), progress=False)
    requests = make_requests(args.jobs, size, args.steps)
    for _ in range(args.warmup):
        editor.edit_batch(requests[: args.batch], max_batch=args.batch)
    reset_peak_memory(device)
    start = time.perf_counter()
    results = editor.edit_batch(requests, max_batch=args.batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} edits failed: {failed[0]!r}")
    return {
        "batch": args.batch,
        "edits_per_s": len(requests) / seconds,
        "seconds": seconds,
        "peak_mb": peak_memory_mb(device),
        "processed": f"{results[0].region.width}x{results[0].region.height}",
    }


def side_name(batch: int) -> str:
    return f"batch{batch}"


def cmd_run(args) -> dict:
    sides = {
        side_name(batch): worker_argv(
            "bench.batch",
            str(batch),
            architecture=args.architecture,
            jobs=args.jobs,
            steps=args.steps,
            size=args.size,
            device=args.device,
            dtype=args.dtype,
            warmup=args.warmup,
        )
        for batch in args.sizes
    }
    results = alternate(sides, args.repeats)
    summary = summarise(results, KEYS)
    baseline = side_name(min(args.sizes))
    print_table(summary, KEYS, baseline=baseline)
    ratios = {
        name: summary[name]["edits_per_s"] / summary[baseline]["edits_per_s"] for name in summary
    }
    for name, ratio in ratios.items():
        if name != baseline:
            print(f"throughput {name}/{baseline}: {ratio:.2f}")
    if {1, 8} <= set(args.sizes):
        print("(target: batch8/batch1 >= 1.5 on a GPU)")
    return {
        "benchmark": "batch",
        "architecture": args.architecture,
        "size": results[baseline][0]["processed"],
        "steps": args.steps,
        "jobs": args.jobs,
        "sizes": list(args.sizes),
        "device": args.device,
        "dtype": args.dtype,
        "runs": results,
        "median": summary,
        "throughput_ratio": ratios,  # edits/s over the smallest batch size's
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--architecture", choices=ARCHITECTURES, default="mini")
    p.add_argument("--sizes", type=batch_sizes, default=(1, 4, 8), help="batch sizes, 1,4,8")
    p.add_argument("--jobs", type=positive_int, default=8, help="edits timed per batch size")
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument(
        "--size", type=non_negative_int, default=0, help="processing size (0: the model's native)"
    )
    p.add_argument(
        "--repeats", type=positive_int, default=2, help="runs of each batch size, alternating"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))
    p.add_argument(
        "--warmup", type=non_negative_int, default=1, help="untimed batches before the timed run"
    )
    p.add_argument("--out", default="out/bench/batch.json", help="the JSON report")
    return p


def worker_main(argv: list[str]) -> dict:
    """``BATCH [options]`` (what ``worker_argv`` gives after ``worker``) -> ``worker``'s result."""
    args = parser().parse_args(argv[1:])
    args.batch = int(argv[0])
    return worker(args)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:  # internal: one batch size, measured in this process
        print(json.dumps(worker_main(argv[1:])))
        return 0
    args = parser().parse_args(argv)
    if args.jobs < max(args.sizes):
        parser().error(f"--jobs must be at least the largest batch size ({max(args.sizes)})")
    write_report(args.out, cmd_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
