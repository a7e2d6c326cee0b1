"""Node benchmarks in a real ComfyUI (COMFYUI_PATH must name a checkout).

    python -m bench.nodes interval [--size 256 --steps 10 --repeats 2]
    python -m bench.nodes repeat

``interval``: UNet evaluations and wall time of the Inpaint Sampler with Similarity Guidance over
the whole schedule against a guidance interval covering half the steps (outside it the
unconditional pass is skipped). SD1.5-sized random weights.

``repeat``: a real server runs the basic workflow, then the same workflow with only the seed
changed; per-node timings from the server's websocket events show that the second run loads no
model and does not recompute the exemplar embedding.

The node side of ``python -m bench.inference same`` also runs here (``worker``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from exemplar_core import node_ids

from .common import (
    REPO,
    add_warmup_option,
    dtype_named,
    host_harness,
    pick_device,
    timed,
    write_report,
)

NODE_SAMPLER = ("ddim", "ddim_uniform")  # the node benchmarks' sampler and scheduler defaults


def _require_comfyui() -> None:
    if not os.environ.get("COMFYUI_PATH"):
        raise SystemExit(
            "error: set COMFYUI_PATH to a ComfyUI checkout (COMFYUI_PATH=/path/to/ComfyUI)"
        )


def _pbe_host():
    """tests/host/pbe_host.py, the harness that loads ComfyUI and this pack (COMFYUI_PATH set)."""
    _require_comfyui()
    return host_harness()


def load_host(device: torch.device | None = None):
    pbe_host = _pbe_host()
    models = Path(tempfile.mkdtemp(prefix="pbe-bench-models-"))
    cpu = device is None or device.type == "cpu"
    return pbe_host, pbe_host.load_host(models, cpu=cpu)


def native_parts(host, seed_model, dtype: torch.dtype | None = None):
    """MODEL, VAE and encoder built by the pack's own builders from an in-memory checkpoint, in
    ``dtype`` (None: ComfyUI's own choice for the device, as the Loader node makes it)."""
    from exemplar_core.checkpoint import checkpoint_from_model

    builder = host.module("nodes.model_builder")
    ckpt = checkpoint_from_model(seed_model)
    return (
        builder.comfy_model(ckpt, dtype),
        builder.comfy_vae(ckpt, dtype),
        builder.comfy_encoder(ckpt, dtype),
    )


def _inputs(width: int, height: int, box):
    from .inference import make_inputs

    source, mask, exemplar = make_inputs(width, height, box)
    return source.permute(0, 2, 3, 1), mask[:, 0], exemplar.permute(0, 2, 3, 1)


def _sample(host, args, model, vae, conditioning, image, mask):
    """The Inpaint Sampler node at seed 0, similarity 5 with the benchmark's steps, sampler,
    scheduler and size; returns the IMAGE."""
    positive, negative = conditioning[:2]
    result, *_ = host.run(
        node_ids.INPAINT_SAMPLER,
        model=model,
        vae=vae,
        positive=positive,
        negative=negative,
        image=image,
        mask=mask,
        seed=0,
        steps=args.steps,
        similarity=5.0,
        sampler_name=args.sampler,
        scheduler=args.scheduler,
        resolution=args.size,
    )
    return result


def node_edit(args):
    """Exemplar Encode + Inpaint Sampler nodes in ComfyUI on the worker's inputs: (edit(), the
    UNet's dtype); edit() returns the IMAGE."""
    from .inference import build_model

    device = pick_device(args.device)
    _, host = load_host(device)
    model = build_model()
    dtype = None if args.dtype == "auto" else dtype_named(args.dtype, device)
    unet, vae, encoder = native_parts(host, model, dtype)
    del model
    image, mask, exemplar = _inputs(args.width, args.height, tuple(args.box))

    def edit():
        conditioning = host.run(node_ids.EXEMPLAR_ENCODE, encoder=encoder, exemplar=exemplar)
        return _sample(host, args, unet, vae, conditioning, image, mask)

    return edit, str(unet.model.get_dtype()).removeprefix("torch.")


def worker_node(args) -> dict:
    """One measured edit through the Exemplar Encode + Inpaint Sampler nodes."""
    edit, unet_dtype = node_edit(args)
    result, seconds, peak = timed(edit, pick_device(args.device), args.warmup)
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "output": f"{result.shape[2]}x{result.shape[1]}",
        "sampler": f"{args.sampler}/{args.scheduler}",
        "unet_dtype": unet_dtype,
    }


def cmd_interval(args) -> dict:
    """Full guidance against a guidance interval covering half the steps."""
    from .inference import build_model

    _, host = load_host(pick_device(args.device))
    import comfy.samplers  # importable once load_host has put ComfyUI on sys.path

    unet, vae, encoder = native_parts(host, build_model())
    size = args.size
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    image, mask, exemplar = _inputs(size, size, box)
    conditioning = host.run(node_ids.EXEMPLAR_ENCODE, encoder=encoder, exemplar=exemplar)
    sampling = unet.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, args.scheduler, args.steps)
    step_sigmas = sorted(float(s) for s in sigmas[:-1])
    # the upper half of the schedule (the early, high-noise steps) keeps guidance
    lo = (step_sigmas[len(step_sigmas) // 2 - 1] + step_sigmas[len(step_sigmas) // 2]) / 2
    hi = step_sigmas[-1] + 1.0
    variants = {
        "full": dict(similarity=5.0),
        "interval": dict(similarity=5.0, sigma_low=lo, sigma_high=hi),
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, options in variants.items():
            (patched,) = host.run(node_ids.SIMILARITY_GUIDANCE, model=unet, **options)
            spy = patched.clone()
            evaluations = []

            def count(apply, call, evaluations=evaluations):
                evaluations.append(call["input"].shape[0])
                return apply(call["input"], call["timestep"], **call["c"])

            spy.set_model_unet_function_wrapper(count)
            start = time.perf_counter()
            _sample(host, args, spy, vae, conditioning, image, mask)
            seconds = time.perf_counter() - start
            runs[name].append(
                {
                    "seconds": seconds,
                    "unet_sample_evaluations": sum(evaluations),
                    "unet_calls": len(evaluations),
                }
            )
            print(f"  {name}: {runs[name][-1]}", flush=True)
    summary = {
        name: {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "unet_sample_evaluations": rs[0]["unet_sample_evaluations"],
        }
        for name, rs in runs.items()
    }
    full, part = summary["full"], summary["interval"]
    print(f"{'variant':<10}{'seconds':>10}{'UNet sample evals':>20}")
    for name, row in summary.items():
        print(f"{name:<10}{row['seconds']:>10.2f}{row['unet_sample_evaluations']:>20}")
    print(
        f"interval/full: time {part['seconds'] / full['seconds']:.2f}, evaluations "
        f"{part['unet_sample_evaluations'] / full['unet_sample_evaluations']:.2f}"
    )
    return {
        "benchmark": "guidance_interval",
        "size": size,
        "steps": args.steps,
        "sampler": f"{args.sampler}/{args.scheduler}",
        "sigma_interval": [lo, hi],
        "step_sigmas": step_sigmas,
        "runs": runs,
        "median": summary,
    }


def _timed_prompt(client, prompt: dict) -> dict:
    """Queue a prompt and time each node from the websocket's events."""
    from exemplar_core.headless import open_websocket

    ws = open_websocket(client, 300)
    try:
        prompt_id = client.queue(prompt)
        timings: dict[str, float] = {}
        cached: list[str] = []
        current, since = None, time.perf_counter()
        for message in ws.messages():
            kind, data = message.get("type"), message.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            now = time.perf_counter()
            if kind == "execution_cached":
                cached = list(data.get("nodes", []))
            elif kind == "executing":
                if current is not None:
                    timings[current] = timings.get(current, 0.0) + now - since
                current, since = data.get("node"), now
                if current is None:
                    break
            elif kind == "execution_error":
                raise RuntimeError(f"the workflow failed: {data.get('exception_message')}")
        return {"timings": timings, "cached": cached}
    finally:
        ws.close()


def cmd_repeat(args) -> dict:
    from exemplar_core import headless

    pbe_host = _pbe_host()
    base = Path(tempfile.mkdtemp(prefix="pbe-bench-server-"))
    models = base / "models"
    pbe_host.save_tiny_checkpoint(models / pbe_host.TINY_MODEL_NAME)
    inputs = base / "inputs"
    inputs.mkdir()
    from PIL import Image

    Image.new("RGB", (96, 80), (90, 140, 60)).save(inputs / "source.png")
    mask = Image.new("L", (96, 80), 0)
    mask.paste(255, (30, 20, 70, 60))
    mask.save(inputs / "mask.png")
    Image.new("RGB", (48, 48), (200, 40, 40)).save(inputs / "exemplar.png")
    server = pbe_host.start_server(base, models)
    try:
        client = headless.Client(server.url)
        prompt = json.loads((REPO / "workflows" / "api" / "basic_exemplar_edit.json").read_text())
        for title, name in (
            ("source", "source.png"),
            ("mask", "mask.png"),
            ("exemplar", "exemplar.png"),
        ):
            node = headless.find_node(prompt, title)
            prompt[node]["inputs"]["image"] = client.upload_image(inputs / name)
        headless.set_all(prompt, node_ids.LOADER, "model_name", pbe_host.TINY_MODEL_NAME)
        headless.set_all(prompt, node_ids.INPAINT_SAMPLER, "steps", 4)
        headless.set_all(prompt, node_ids.INPAINT_SAMPLER, "resolution", 64)
        results = []
        for seed in (1, 2):
            headless.set_all(prompt, node_ids.INPAINT_SAMPLER, "seed", seed)
            results.append(_timed_prompt(client, prompt))
    finally:
        server.stop()
    names = {node: data["class_type"] for node, data in prompt.items()}
    print(f"{'node':<36}{'first run s':>12}{'seed changed s':>16}")
    for node in sorted(names, key=int):
        first = results[0]["timings"].get(node)
        second = results[1]["timings"].get(node)
        label = f"{node} {names[node]}"
        shown = "cached" if node in results[1]["cached"] else f"{second:.3f}" if second else "-"
        print(f"{label:<36}{first if first is not None else 0:>12.3f}{shown:>16}")
    reran = [names[n] for n in results[1]["timings"] if n not in results[1]["cached"]]
    print(f"re-executed after a seed change: {', '.join(sorted(set(reran)))}")
    return {"benchmark": "repeat", "nodes": names, "runs": results, "reexecuted": reran}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nodes", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("interval", help="guidance interval: UNet evaluations and time")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sampler", default=NODE_SAMPLER[0])
    p.add_argument("--scheduler", default=NODE_SAMPLER[1])
    p.add_argument("--device", default="cpu", help="cpu, or auto/cuda for ComfyUI on the GPU")
    p.add_argument("--out", default="out/bench/guidance_interval.json")
    r = sub.add_parser("repeat", help="re-queue with a new seed: what the server recomputes")
    r.add_argument("--out", default="out/bench/repeat_runs.json")
    w = sub.add_parser("worker", help="internal: one measured node edit in this process")
    w.add_argument("side", choices=("node",))
    for name in ("--width", "--height", "--steps", "--size"):
        w.add_argument(name, type=int, required=True)
    w.add_argument("--box", type=int, nargs=4, required=True)
    w.add_argument("--device", default="cpu", help="cpu, or auto/cuda for ComfyUI on the GPU")
    w.add_argument("--sampler", default=NODE_SAMPLER[0])
    w.add_argument("--scheduler", default=NODE_SAMPLER[1])
    w.add_argument("--dtype", default="auto", help="auto: ComfyUI's choice for the device")
    add_warmup_option(w)
    args = parser.parse_args(argv)
    if args.command == "worker":
        print(json.dumps(worker_node(args)))
        return 0
    report = cmd_interval(args) if args.command == "interval" else cmd_repeat(args)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
