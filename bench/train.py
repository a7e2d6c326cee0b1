"""Training speed and memory: ``python -m train`` against a minimal diffusers + accelerate loop.

    python -m bench.train throughput    [--architecture mini --resolution 64 --batch 16]
                                        [--sides ours,minimal,ours_ema,ours_compiled,
                                         ours_inline_checksum,ours_fused]
                                        [--set train.compile=true]
    python -m bench.train checkpointing [--architecture mini --resolution 128 --batches 8,32]
    python -m bench.train data          [--resolution 512 --samples 200 --gpu-rate 0]
    python -m bench.train memory        [--size 512 --batch 4 --arch published --lora-rank 16]

``throughput``: both sides train the same model (same architecture, random init from one seed,
frozen tower and VAE), on the same synthetic scenes through the same pair dataset, with the same
batch, resolution, precision, optimiser (AdamW) and gradient-checkpointing setting. Each run is a
fresh process and the sides alternate; a run times ``--steps`` optimiser steps after
``--warmup`` steps (data waits included) and reads the peak memory over that window (RSS on CPU,
max allocated on CUDA). "ours" is the real trainer (EMA off, as the minimal loop has none; the
EMA's cost is reported as its own side); "minimal" is the loop a user would write from the
diffusers and accelerate docs; "ours_compiled" is "ours" with ``train.compile = true`` (the
UNet under ``torch.compile``; the warm-up steps take the compile, so give ``--warmup`` enough);
"ours_inline_checksum" is "ours" with the per-batch data checksum (a float64 sum of the batch's
pixels) also computed on the training thread, where it was before it moved into the DataLoader
workers: the pair measures that move; "ours_fused" is "ours" with
``train.fused_optimizer = true``. Each extra side prints its ratio to "ours".

``checkpointing``: the trainer with and without UNet gradient checkpointing at each batch of
``--batches``; the report gives, per batch, the peak-memory ratio (target <= 0.6) and the
samples/s ratio (what it costs).

``memory``: for full fine-tuning (AdamW, 8-bit AdamW, Adafactor) and LoRA, the bytes of the
parameters (trained and frozen, by dtype), gradients, optimiser state (a real step per distinct
shape), EMA and activations (what autograd saves in the trained path's forward, counted under
torch's FakeTensorMode: exact, nothing computed) at ``--size`` px and ``--batch``, bf16 autocast,
gradient checkpointing off and on; totals and the 8/12/16/24 GB cards they fit; on a GPU also
the measured peak of one real step per configuration.

``data``: the pair pipeline alone (image decode, box choice, mask jitter, crop, reference
augmentation) in one process with one thread: samples/s per CPU core at ``--resolution``, and
how many cores keep one GPU fed at ``--gpu-rate`` samples/s (the training rate measured there).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from exemplar_core.argtypes import positive_int

from .common import (
    alternate,
    peak_memory_mb,
    pick_device,
    print_table,
    reset_peak_memory,
    summarise,
    worker_argv,
    write_report,
)

DATA_SEED = 5
# The settings a worker process gets from the command (each an ``add_run_options`` option, and
# --checkpointing).
WORKER_OPTIONS = (
    "architecture",
    "resolution",
    "batch",
    "steps",
    "warmup",
    "device",
    "precision",
    "workers",
    "scenes",
    "checkpointing",
)

# Dense bf16/fp16 tensor-core peak (no sparsity) from the vendors' data sheets, TFLOP/s, by a
# substring of torch.cuda.get_device_name(). Other devices: pass --peak-tflops.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}


def step_flops(architecture: str, resolution: int, batch: int) -> dict:
    """FLOPs of one training step of the model (not counting gradient-checkpointing recompute),
    counted by torch's FlopCounterMode on meta tensors (nothing is allocated or computed):
    ``frozen`` is the VAE encodes of image and masked image plus the tower (no grad);
    ``trained`` the mapper, UNet forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from exemplar_core.model import ModelConfigs, PaintByExampleModel

    configs = ModelConfigs.named(architecture)
    size = configs.encoder.image_size
    with torch.device("meta"):
        model = PaintByExampleModel(configs)
        image = torch.zeros(batch, 3, resolution, resolution)
        reference = torch.zeros(batch, 3, size, size)
        timesteps = torch.zeros(batch, dtype=torch.long)
    model.requires_grad_(False)
    for p in list(model.unet.parameters()) + model.encoder.trainable_parameters():
        p.requires_grad_(True)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.no_grad():
            latents = model.encode_latent(image)
            masked = model.encode_latent(image)
            pooled = model.encoder.pooled(reference)
        frozen = counter.get_total_flops()
        keep = torch.zeros_like(latents[:, :1])
        condition = model.encoder.project(pooled)
        x = torch.cat([latents, masked, keep], dim=1)
        pred = model.unet(x, timesteps, encoder_hidden_states=condition).sample
        pred.float().square().mean().backward()
        total = counter.get_total_flops()
    return {"frozen": frozen / batch, "trained": (total - frozen) / batch, "total": total / batch}


def peak_tflops(device: torch.device, given: float) -> float | None:
    if given > 0:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def make_scenes(resolution: int, count: int, root: Path | None = None) -> Path:
    """Synthetic scenes at ``resolution`` (cached under ``root``); returns the JSONL path."""
    from train import synthetic

    root = root or Path(tempfile.gettempdir()) / "pbe-bench-scenes"
    out = root / f"{resolution}px-{count}"
    jsonl = out / "train.jsonl"
    if not jsonl.exists():
        synthetic.main(
            [
                "--out",
                str(out),
                "--train",
                str(count),
                "--test",
                "1",
                "--eval",
                "0",
                "--size",
                str(resolution),
                "--seed",
                str(DATA_SEED),
            ]
        )
    return jsonl


def trainer_config(args, out_dir: str, ema: bool, checkpointing: bool):
    from train.config import load_config

    device = pick_device(args.device)
    overrides = [
        f"out_dir={out_dir}",
        "model.init=random",
        f"model.architecture={args.architecture}",
        "data.format=jsonl",
        f"data.path={make_scenes(args.resolution, args.scenes)}",
        f"data.resolution={args.resolution}",
        f"data.num_workers={args.workers}",
        "data.val_count=1",
        f"train.batch_size={args.batch}",
        f"train.max_steps={args.warmup + args.steps + 1}",
        "train.lr=1e-5",
        "train.warmup_steps=0",
        f"train.mixed_precision={args.precision}",
        f"train.gradient_checkpointing={str(checkpointing).lower()}",
        f"train.ema={str(ema).lower()}",
        "train.validate_every=0",
        "train.val_steps=1",
        "train.checkpoint_every=1000000",
        "train.log_every=1000000",
        "train.export_dtype=fp16",
        f"train.cpu={str(device.type == 'cpu').lower()}",
        *getattr(args, "set", []),
    ]
    return load_config(None, overrides)


class Window:
    """Times the steps ``warmup + 1 .. warmup + steps`` and reads peak memory over them;
    ``on_start`` and ``on_stop`` run at the window's edges (``bench.profile`` starts and stops
    its profiler there)."""

    def __init__(
        self,
        warmup: int,
        steps: int,
        device: torch.device,
        on_start: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.on_start, self.on_stop = on_start, on_stop
        self.calls = 0
        self.start = self.seconds = self.peak = None

    def tick(self) -> None:
        """Call at the start of every step."""
        self.calls += 1
        if self.calls == self.warmup + 1:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            reset_peak_memory(self.device)
            if self.on_start is not None:
                self.on_start()
            self.start = time.perf_counter()
        elif self.calls == self.warmup + self.steps + 1:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start
            self.peak = peak_memory_mb(self.device)
            if self.on_stop is not None:
                self.on_stop()

    def result(self, batch: int) -> dict:
        if self.seconds is None:
            raise RuntimeError(f"only {self.calls} steps ran; the window needs more")
        return {
            "samples_per_s": batch * self.steps / self.seconds,
            "step_s": self.seconds / self.steps,
            "peak_mb": self.peak,
        }


# The trainer's sides: side -> (EMA on, extra config overrides, data checksum on the thread).
TRAINER_SIDES = {
    "ours": (False, (), False),
    "ours_ema": (True, (), False),
    "ours_compiled": (False, ("train.compile=true",), False),
    "ours_inline_checksum": (False, (), True),
    "ours_fused": (False, ("train.fused_optimizer=true",), False),
}
SIDES = (*TRAINER_SIDES, "minimal")


def thread_checksum(batch: dict) -> float:
    """The per-batch data checksum as the training thread computed it before it moved into the
    DataLoader workers (``collate_pairs``' ``image_sum``): a float64 sum of the target pixels."""
    return float(batch["image"].double().sum())


def worker_ours(args, ema: bool, checkpointing: bool, side: str = "ours") -> dict:
    """The project's trainer, timed from inside its own loop, as ``side`` runs it."""
    window = Window(args.warmup, args.steps, pick_device(args.device))
    _, overrides, checksum = TRAINER_SIDES[side]
    side_args = argparse.Namespace(**{**vars(args), "set": [*args.set, *overrides]})
    return run_trainer(side_args, ema, checkpointing, window, inline_checksum=checksum)


def run_trainer(
    args, ema: bool, checkpointing: bool, window: Window, inline_checksum: bool = False
) -> dict:
    """``python -m train`` on the benchmark's config, with ``window.tick()`` at the start of
    every step (training_step is wrapped); returns ``window.result``. ``inline_checksum`` adds
    the data checksum's old cost to every step, on the training thread."""
    from train.trainer import Trainer, train

    original = Trainer.training_step

    def timed_step(self, batch):
        window.tick()
        if inline_checksum:
            thread_checksum(batch)
        return original(self, batch)

    Trainer.training_step = timed_step
    try:
        with tempfile.TemporaryDirectory(prefix="pbe-bench-train-") as out:
            train(trainer_config(args, out, ema, checkpointing))
    finally:
        Trainer.training_step = original
    return window.result(args.batch)


def worker_minimal(args) -> dict:
    """A minimal diffusers + accelerate training loop on the same model, data and settings."""
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from exemplar_core.config import SCHEDULE
    from train.dataset import PairDataset, collate_pairs, pair_spec
    from train.model_init import build_model
    from train.readers import BoxFilter, read_dataset

    device = pick_device(args.device)
    config = trainer_config(args, tempfile.mkdtemp(), ema=False, checkpointing=args.checkpointing)
    accelerator = Accelerator(mixed_precision=args.precision, cpu=device.type == "cpu")
    model = build_model(config.model, config.train.seed)
    model.requires_grad_(False)
    trained = list(model.unet.parameters()) + model.encoder.trainable_parameters()
    for p in trained:
        p.requires_grad_(True)
    if args.checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.to(accelerator.device)
    model.vae.eval()
    model.encoder.tower.eval()

    d, enc = config.data, model.configs.encoder
    records, _ = read_dataset(d.format, d.path, d.image_root, BoxFilter(d.min_area, d.max_area))
    pairs = PairDataset(records, pair_spec(d, enc.image_size, enc.mean, enc.std), seed=0)

    class Flat(torch.utils.data.Dataset):
        def __len__(self):
            return len(pairs)

        def __getitem__(self, i):
            return pairs[(0, i)]

    loader = torch.utils.data.DataLoader(
        Flat(),
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        collate_fn=collate_pairs,
        persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )
    optimizer = torch.optim.AdamW(trained, lr=1e-5)
    unet, optimizer, loader = accelerator.prepare(model.unet, optimizer, loader)
    scheduler = DDPMScheduler(**SCHEDULE)
    alphas = scheduler.alphas_cumprod.to(accelerator.device)
    window = Window(args.warmup, args.steps, device)
    total = args.warmup + args.steps + 1
    step = 0
    while step < total:
        for batch in loader:
            window.tick()
            with torch.no_grad(), accelerator.autocast():
                latents = model.encode_latent(batch["image"]).float()
                masked = model.encode_latent(batch["masked_image"]).float()
                keep = F.interpolate(batch["keep_mask"], size=latents.shape[-2:], mode="bilinear")
                pooled = model.encoder.pooled(batch["reference"]).float()
            with accelerator.autocast():
                cond = model.encoder.project(pooled)
                drop = torch.rand(cond.shape[0], device=cond.device) < 0.2
                cond = torch.where(
                    drop[:, None, None],
                    model.encoder.unconditional(cond.shape[0]).to(cond.dtype),
                    cond,
                )
                noise = torch.randn_like(latents)
                t = torch.randint(0, len(alphas), (latents.shape[0],), device=latents.device)
                noisy = scheduler.add_noise(latents, noise, t)
                x = torch.cat([noisy, masked, keep.to(noisy.dtype)], dim=1)
                pred = unet(x, t, encoder_hidden_states=cond).sample
            loss = F.mse_loss(pred.float(), noise)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step >= total:
                break
    return window.result(args.batch)


def _worker_argv(side: str, args) -> list[str]:
    sets = [a for item in args.set for a in ("--set", item)] if side != "minimal" else []
    options = {k: getattr(args, k) for k in WORKER_OPTIONS}
    return worker_argv("bench.train", side, **options) + sets


def _compare(args, sides: dict[str, list[str]], baseline: str | None) -> tuple[list, dict]:
    """Alternate the sides' worker processes; print and return (runs, medians)."""
    make_scenes(args.resolution, args.scenes)  # once, outside the timed workers
    results = alternate(sides, args.repeats)
    keys = ("samples_per_s", "peak_mb")
    summary = summarise(results, keys)
    print_table(summary, keys, baseline=baseline)
    return results, summary


def cmd_throughput(args) -> dict:
    names = [n.strip() for n in args.sides.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SIDES))
    if unknown or not names:
        raise SystemExit(f"error: --sides takes {', '.join(SIDES)}, not {args.sides!r}")
    sides = {side: _worker_argv(side, args) for side in names}
    results, summary = _compare(args, sides, baseline="minimal" if "minimal" in sides else None)
    report = {
        "benchmark": "train_throughput",
        "settings": _settings(args),
        "runs": results,
        "median": summary,
    }
    if "ours" in summary and "minimal" in summary:
        ratio = summary["ours"]["samples_per_s"] / summary["minimal"]["samples_per_s"]
        print(f"throughput ours/minimal: {ratio:.2f} (target >= 1.0)")
        report["throughput_ratio"] = ratio
    if "ours" in summary:
        report["ratio_to_ours"] = {}
        for name in (n for n in summary if n in TRAINER_SIDES and n != "ours"):
            ratio = summary[name]["samples_per_s"] / summary["ours"]["samples_per_s"]
            memory = summary[name]["peak_mb"] / summary["ours"]["peak_mb"]
            report["ratio_to_ours"][name] = {"samples_per_s": ratio, "peak_mb": memory}
            print(f"{name}/ours: throughput {ratio:.2f}, peak memory {memory:.2f}")
    report.update(_utilisation(args, summary))
    return report


def _utilisation(args, summary: dict) -> dict:
    """Model FLOPs per sample and, where the device's peak is known, MFU per side."""
    flops = step_flops(args.architecture, args.resolution, args.batch)
    out = {"flops_per_sample": flops}
    peak = peak_tflops(pick_device(args.device), args.peak_tflops)
    trained, frozen = flops["trained"] / 1e9, flops["frozen"] / 1e9
    print(
        f"model FLOPs per training sample: {flops['total'] / 1e9:.1f} GFLOP "
        f"({trained:.1f} trained, {frozen:.1f} frozen encoders)"
    )
    if peak is None:
        print("MFU: not given (unknown peak for this device; pass --peak-tflops)")
        return out
    out["peak_tflops"] = peak
    out["mfu"] = {}
    for name, row in summary.items():
        mfu = row["samples_per_s"] * flops["total"] / (peak * 1e12)
        out["mfu"][name] = mfu
        print(f"MFU {name}: {100 * mfu:.1f}% of {peak:.0f} TFLOP/s")
    return out


def cmd_checkpointing(args) -> dict:
    """Plain and checkpointed runs at each batch of ``args.batches``, alternating all four."""
    batches = args.batches or [args.batch]
    sides = {}
    for batch in batches:
        for name, on in (("plain", False), ("checkpointing", True)):
            side_args = argparse.Namespace(**{**vars(args), "batch": batch, "checkpointing": on})
            sides[f"{name} b{batch}"] = _worker_argv("ours", side_args)
    results, summary = _compare(args, sides, baseline=f"plain b{batches[0]}")
    by_batch = {}
    for batch in batches:
        plain, ckpt = summary[f"plain b{batch}"], summary[f"checkpointing b{batch}"]
        row = {
            "memory_ratio": ckpt["peak_mb"] / plain["peak_mb"],
            "speed_ratio": ckpt["samples_per_s"] / plain["samples_per_s"],
        }
        by_batch[str(batch)] = row
        print(
            f"batch {batch}: peak memory with/without checkpointing {row['memory_ratio']:.2f} "
            f"(target <= 0.6), samples/s {row['speed_ratio']:.2f}"
        )
    return {
        "benchmark": "train_checkpointing",
        "settings": {**_settings(args), "batches": batches},
        "runs": results,
        "median": summary,
        "by_batch": by_batch,
        "memory_ratio": by_batch[str(batches[-1])]["memory_ratio"],
    }


def cmd_data(args) -> dict:
    from exemplar_core.model import ModelConfigs
    from train.config import DataSection
    from train.dataset import PairDataset, pair_spec
    from train.readers import BoxFilter, read_dataset

    jsonl = make_scenes(args.resolution, args.scenes)
    data = DataSection(format="jsonl", path=str(jsonl), resolution=args.resolution)
    enc = ModelConfigs.published().encoder
    records, _ = read_dataset(
        data.format, data.path, data.image_root, BoxFilter(data.min_area, data.max_area)
    )
    pairs = PairDataset(records, pair_spec(data, enc.image_size, enc.mean, enc.std), seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as one DataLoader worker has
    try:
        for i in range(min(5, len(pairs))):  # warm-up (imports, first allocations)
            pairs[(0, i)]
        start = time.perf_counter()
        for i in range(args.samples):
            pairs[(1, i % len(pairs))]
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    rate = args.samples / seconds
    report = {
        "benchmark": "train_data",
        "resolution": args.resolution,
        "samples": args.samples,
        "samples_per_s_per_core": rate,
    }
    print(
        f"data pipeline at {args.resolution} px, full augmentation: {rate:.1f} samples/s per core"
    )
    if args.gpu_rate > 0:
        cores = args.gpu_rate / rate
        report["gpu_rate"] = args.gpu_rate
        report["cores_per_gpu"] = cores
        print(f"cores to feed one GPU at {args.gpu_rate:.1f} samples/s: {cores:.1f}")
    return report


# ---------------------------------------------------------------------------------------------
# memory: byte counts of one training step (and measured peaks on a GPU)

GiB = 2**30
CARDS_GIB = (8, 12, 16, 24)
# On a GPU torch's AdamW and Adafactor take their multi-tensor ("foreach") path, which makes
# one temporary the size of the trained weights during the step (AdamW: the square root of the
# second moment; Adafactor: the update; torch/optim/adam.py, _adafactor.py). bitsandbytes
# updates each tensor in one kernel.
FOREACH_TEMPORARY = ("adamw", "adafactor")
# (name, method, optimiser): full fine-tuning with each optimiser, and LoRA.
MEMORY_CONFIGS = (
    ("full AdamW", "full", "adamw"),
    ("full AdamW8bit", "full", "adamw8bit"),
    ("full Adafactor", "full", "adafactor"),
    ("LoRA AdamW", "lora", "adamw"),
)


class SavedTensors:
    """Bytes of the tensors autograd saves for the backward pass, each storage counted once;
    the parameters' own storages (counted as parameters) are left out."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.sizes: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in self.exclude:
            self.sizes[storage._cdata] = storage.nbytes()
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def inject_lora(model, rank: int) -> list[torch.nn.Parameter]:
    """The trainer's LoRA (attention modules, exemplar side 'lora') at ``rank``; returns the
    trained parameters."""
    from train import config, lora

    return lora.inject_lora(model, config.LoraSection(rank=rank, alpha=float(rank)))


def trained_model(architecture: str, method: str, rank: int):
    """A fake-tensor model (shapes and dtypes only, nothing allocated) set up for ``method``, the
    fake mode it lives in, and its trained parameters. Built and LoRA-injected on the meta device
    (peft cannot move fake parameters), then given fake CPU tensors of the same shapes, so that
    CPU autocast applies to it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from exemplar_core.model import ModelConfigs, PaintByExampleModel
    from train.trainer import freeze_for_training

    with torch.device("meta"):
        model = PaintByExampleModel(ModelConfigs.named(architecture))
        freeze_for_training(model)
        if method == "lora":
            inject_lora(model, rank)
    mode = FakeTensorMode()
    fakes: dict[int, torch.Tensor] = {}  # a tensor shared by two modules stays shared
    with mode:
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, value in table.items():
                    if value is None:
                        continue
                    if id(value) not in fakes:
                        fake = torch.empty(value.shape, dtype=value.dtype)
                        if isinstance(value, torch.nn.Parameter):
                            fake = torch.nn.Parameter(fake, requires_grad=value.requires_grad)
                        fakes[id(value)] = fake
                    table[name] = fakes[id(value)]
    return model, mode, [p for p in model.parameters() if p.requires_grad]


def bytes_by_dtype(tensors) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tensors:
        name = str(t.dtype).removeprefix("torch.")
        out[name] = out.get(name, 0) + t.numel() * t.element_size()
    return out


def activation_bytes(model, mode, batch: int, resolution: int, checkpointing: bool) -> dict:
    """Bytes autograd saves in the forward of the trained path (mapper head and UNet) at
    ``batch``, bf16 autocast, under torch's FakeTensorMode (exact, nothing computed).

    With gradient checkpointing a block's inside is not saved; the checkpoint holds the block's
    inputs (``held``) and the backward recomputes one block at a time (``largest_block``: the
    most any one block saves). ``peak`` = saved + held + largest_block."""
    from torch.utils.checkpoint import checkpoint

    from train.trainer import Denoiser

    exclude = {p.untyped_storage()._cdata for p in model.parameters()}
    saved = SavedTensors(exclude)
    held: dict[int, int] = {}
    largest = [0]

    def checkpointed(module, *args):
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.untyped_storage()._cdata not in exclude:
                held[arg.untyped_storage()._cdata] = arg.untyped_storage().nbytes()
        inside = SavedTensors(exclude)
        with inside.hooks():
            module(*args)
        largest[0] = max(largest[0], inside.bytes)
        return checkpoint(module.__call__, *args, use_reentrant=False)

    if checkpointing:
        model.unet.enable_gradient_checkpointing(checkpointed)
    else:
        model.unet.disable_gradient_checkpointing()
    side = resolution // 8
    with mode:
        noisy, masked = torch.randn(batch, 4, side, side), torch.randn(batch, 4, side, side)
        keep = torch.rand(batch, 1, side, side)
        pooled = torch.randn(batch, model.encoder.config.width)
        timesteps = torch.randint(0, 1000, (batch,))
        drop = torch.zeros(batch, dtype=torch.bool)
        with saved.hooks(), torch.autocast("cpu", dtype=torch.bfloat16):
            Denoiser(model)(noisy, timesteps, masked, keep, pooled, drop)
    held_bytes = sum(v for k, v in held.items() if k not in saved.sizes)
    return {
        "saved": saved.bytes,
        "held": held_bytes,
        "largest_block": largest[0],
        "peak": saved.bytes + held_bytes + largest[0],
    }


def optimizer_state_bytes(params, name: str) -> int:
    """Exact optimiser-state bytes for ``params`` (their shapes and dtypes): for each distinct
    shape a real step of a fresh optimiser over two such parameters; what the two share (the
    8-bit quantisation maps) is counted once, the rest once per parameter of that shape."""
    from collections import Counter

    from train.optim import build_optimizer, state_tensors

    counts = Counter((tuple(p.shape), p.dtype) for p in params)
    total, shared = 0, 0
    for (shape, dtype), count in counts.items():
        pair = [torch.nn.Parameter(torch.zeros(shape, dtype=dtype)) for _ in range(2)]
        optimizer = build_optimizer(pair, name, lr=1e-5)
        for p in pair:
            p.grad = torch.full_like(p, 1e-3)
        optimizer.step()
        owners: dict[int, set[int]] = {}
        sizes: dict[int, int] = {}
        for index, p in enumerate(pair):
            for t in state_tensors(optimizer.state[p]):
                key = t.untyped_storage().data_ptr()
                owners.setdefault(key, set()).add(index)
                sizes[key] = t.untyped_storage().nbytes()
        own = sum(sizes[k] for k, o in owners.items() if o == {0})
        total += count * own
        shared = max(shared, sum(sizes[k] for k, o in owners.items() if len(o) == 2))
        del optimizer, pair
    return total + shared


def lora_file_bytes(model, rank: int) -> dict[str, int]:
    """Tensor bytes of the LoRA file (fp16 values, fp32 alphas; headers left out) and of the
    single-file model (every weight, fp16 and fp32), from the LoRA-injected ``model``'s exact
    parameter counts."""
    lora_values, alphas, whole = 0, 0, 0
    base_values = 0
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            alphas += 1
        if ".lora_" in name:
            lora_values += p.numel()
        else:
            base_values += p.numel()
            if p.requires_grad:
                whole += p.numel()  # whole-trained exemplar parts, stored as differences
    buffers = sum(b.numel() for b in model.buffers())
    lora = 2 * (lora_values + whole) + 4 * alphas
    return {
        "lora_fp16": lora,
        "model_fp16": 2 * (base_values + buffers),
        "model_fp32": 4 * (base_values + buffers),
    }


def memory_breakdown(args) -> dict:
    """Byte counts per configuration (``MEMORY_CONFIGS``) at ``args.size`` px, ``args.batch``."""
    results: dict[str, dict] = {}
    models: dict[str, tuple] = {}
    for name, method, optimizer in MEMORY_CONFIGS:
        if optimizer == "adamw8bit" and not _importable("bitsandbytes"):
            print(f"{name}: skipped (bitsandbytes is not installed: pip install bitsandbytes)")
            continue
        if method == "lora" and not _importable("train.lora"):
            print(f"{name}: skipped (train.lora.inject_lora is not there yet)")
            continue
        if method not in models:
            model, mode, params = trained_model(args.arch, method, args.lora_rank)
            trained_ids = {id(p) for p in params}
            frozen = [p for p in model.parameters() if id(p) not in trained_ids]
            models[method] = (model, mode, params, frozen, _activations(model, mode, args))
        model, mode, params, frozen, activations = models[method]
        trained_bytes = sum(p.numel() * p.element_size() for p in params)
        results[name] = {
            "method": method,
            "optimizer": optimizer,
            "trained_parameters": sum(p.numel() for p in params),
            "params_trained": bytes_by_dtype(params),
            "params_frozen": bytes_by_dtype(frozen),
            "gradients": trained_bytes,
            "optimizer_state": optimizer_state_bytes(params, optimizer),
            "ema": sum(p.numel() * 4 for p in params),
            "step_temporaries": trained_bytes if optimizer in FOREACH_TEMPORARY else 0,
            "activations": activations,
        }
    if "lora" in models:
        results["lora_file"] = lora_file_bytes(models["lora"][0], args.lora_rank)
    return results


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _activations(model, mode, args) -> dict:
    return {
        ("checkpointing" if on else "no_checkpointing"): activation_bytes(
            model, mode, args.batch, args.size, on
        )
        for on in (False, True)
    }


def memory_totals(row: dict, margin_gib: float) -> list[dict]:
    """Totals of one configuration for checkpointing on/off and the EMA on the device/CPU:
    parameters + gradients + optimiser state + EMA (on the device) + the larger of the
    activations at their peak (forward and backward; gradients fill while activations are
    freed, so this is an upper bound) and the optimiser step's temporaries."""
    params = sum(row["params_trained"].values()) + sum(row["params_frozen"].values())
    out = []
    for ckpt in ("no_checkpointing", "checkpointing"):
        for ema in ("device", "cpu"):
            total = (
                params
                + row["gradients"]
                + row["optimizer_state"]
                + (row["ema"] if ema == "device" else 0)
                + max(row["activations"][ckpt]["peak"], row["step_temporaries"])
            )
            fits = [c for c in CARDS_GIB if total + margin_gib * GiB <= c * GiB]
            out.append(
                {"checkpointing": ckpt == "checkpointing", "ema": ema, "total": total, "fits": fits}
            )
    return out


def print_memory(results: dict, args) -> None:
    def gib(value: int) -> str:
        return f"{value / GiB:8.2f}"

    print(
        f"\nmemory of one training step: {args.arch} architecture, {args.size} px, batch "
        f"{args.batch}, bf16 autocast, LoRA rank {args.lora_rank} (GiB; exact byte counts: "
        "activations under FakeTensorMode, optimiser states from a real step per shape)"
    )
    for name, row in results.items():
        if name == "lora_file":
            continue
        print(f"\n{name} ({row['trained_parameters'] / 1e6:.1f} M trained parameters)")
        for label, value in row["params_trained"].items():
            print(f"  parameters, trained ({label})        {gib(value)}")
        for label, value in row["params_frozen"].items():
            print(f"  parameters, frozen ({label})         {gib(value)}")
        print(f"  gradients                            {gib(row['gradients'])}")
        print(f"  optimiser state ({row['optimizer']:<9})          {gib(row['optimizer_state'])}")
        print(f"  EMA (fp32; 0 on the GPU when on CPU) {gib(row['ema'])}")
        print(f"  optimiser step temporaries (GPU)     {gib(row['step_temporaries'])}")
        for ckpt, values in row["activations"].items():
            label = ckpt.replace("_", " ")
            print(
                f"  activations, {label:<16}        {gib(values['peak'])}  (saved "
                f"{values['saved'] / GiB:.2f}, checkpoint inputs {values['held'] / GiB:.2f}, "
                f"largest block {values['largest_block'] / GiB:.2f})"
            )
    print(
        f"\ntotals (upper bound: parameters, gradients, optimiser state, EMA on the device, and "
        "the larger of activations and step temporaries) and the cards they fit, with "
        f"{args.margin:.1f} GiB left for the CUDA context and allocator fragmentation"
    )
    print(f"{'configuration':<18}{'checkpointing':>14}{'EMA':>8}{'total GiB':>11}  fits in")
    for name, row in results.items():
        if name == "lora_file":
            continue
        for total in row["totals"]:
            fits = ", ".join(f"{c} GB" for c in total["fits"]) or "none of 8-24 GB"
            print(
                f"{name:<18}{'on' if total['checkpointing'] else 'off':>14}{total['ema']:>8}"
                f"{total['total'] / GiB:>11.2f}  {fits}"
            )
    if "lora_file" in results:
        f = results["lora_file"]
        print(
            f"\nLoRA rank {args.lora_rank} file (attention + exemplar 'lora', fp16): "
            f"{f['lora_fp16'] / 2**20:.1f} MiB; single-file model {f['model_fp16'] / 2**20:.0f} "
            f"MiB fp16, {f['model_fp32'] / 2**20:.0f} MiB fp32: "
            f"1/{f['model_fp16'] / f['lora_fp16']:.0f} of the fp16 model (target <= 1/20)"
        )


def gpu_peak(args, method: str, optimizer_name: str, checkpointing: bool, ema_device: str):
    """One real training step (frozen VAE and tower encodes, the trained path's forward and
    backward in bf16 autocast, the optimiser step, the EMA update) of a random-init model on
    ``args.device``; returns torch.cuda.max_memory_allocated in bytes (None on a CPU)."""
    from exemplar_core.model import ModelConfigs, PaintByExampleModel
    from train.ema import EMA
    from train.optim import build_optimizer
    from train.trainer import Denoiser, freeze_for_training, trainable_parameters

    device = pick_device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = PaintByExampleModel(ModelConfigs.named(args.arch))
    freeze_for_training(model)
    params = trainable_parameters(model) if method == "full" else inject_lora(model, args.lora_rank)
    model.to(device)
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
    optimizer = build_optimizer(params, optimizer_name, lr=1e-5)
    ema = EMA(params, 0.9999, device=None if ema_device == "device" else "cpu")
    size, b = model.encoder.config.image_size, args.batch
    for _ in range(2):  # the second step runs with the optimiser state allocated
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            image = torch.rand(b, 3, args.size, args.size, device=device) * 2 - 1
            latents = model.encode_latent(image).float()
            masked = model.encode_latent(image).float()
            pooled = model.encoder.pooled(torch.rand(b, 3, size, size, device=device)).float()
        keep = torch.ones_like(latents[:, :1])
        timesteps = torch.randint(0, 1000, (b,), device=device)
        drop = torch.zeros(b, dtype=torch.bool, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            pred = Denoiser(model)(latents, timesteps, masked, keep, pooled, drop)
        pred.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    del model, optimizer, ema, params
    return peak


def cmd_memory(args) -> dict:
    results = memory_breakdown(args)
    for name, row in results.items():
        if name != "lora_file":
            row["totals"] = memory_totals(row, args.margin)
    print_memory(results, args)
    report = {"benchmark": "train_memory", "settings": vars(args), "configurations": results}
    if pick_device(args.device).type == "cuda":
        print("\nmeasured on the GPU: torch.cuda.max_memory_allocated of one training step (GiB)")
        measured = {}
        for name, method, optimizer in MEMORY_CONFIGS:
            if name not in results:
                continue
            for ckpt in (False, True):
                for ema in ("device", "cpu"):
                    key = f"{name}, checkpointing {'on' if ckpt else 'off'}, EMA {ema}"
                    try:
                        measured[key] = gpu_peak(args, method, optimizer, ckpt, ema)
                        print(f"  {key:<52}{measured[key] / GiB:8.2f}")
                    except torch.cuda.OutOfMemoryError:
                        measured[key] = None
                        print(f"  {key:<52}  out of memory")
        report["gpu_peak_bytes"] = measured
    else:
        print("\nno GPU here: byte counts only (run on a GPU for the measured peaks)")
    return report


def positive_int_list(text: str) -> list[int]:
    """'8,32' -> [8, 32]; each a whole number >= 1."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers >= 1 (e.g. 8,32), got {text!r}"
        )
    return values


def _settings(args) -> dict:
    return {k: getattr(args, k, None) for k in (*WORKER_OPTIONS, "set")}


def add_run_options(
    p: argparse.ArgumentParser, architecture: str, resolution: int, batch: int
) -> None:
    """The run options every trainer benchmark shares (``bench.profile train`` uses them too),
    with the subcommand's own default architecture, resolution and batch."""
    p.add_argument("--architecture", default=architecture, choices=("published", "mini", "tiny"))
    p.add_argument("--resolution", type=int, default=resolution)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--steps", type=int, default=10, help="timed optimiser steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="no", choices=("no", "bf16", "fp16"))
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    p.add_argument("--scenes", type=int, default=200, help="synthetic scenes to train on")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a trainer config override for the trainer's sides (e.g. train.compile=true)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("throughput", help="the trainer against a minimal loop")
    add_run_options(p, "mini", 64, 16)
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    p.add_argument(
        "--sides",
        default="ours,minimal,ours_ema",
        help=f"comma-separated sides to run, of {', '.join(SIDES)}",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="the device's peak TFLOP/s for MFU (default: known GPUs' bf16 peak)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="out/bench/train_throughput.json")
    p = sub.add_parser("checkpointing", help="peak memory with and without checkpointing")
    add_run_options(p, "mini", 128, 8)
    p.add_argument(
        "--batches",
        type=positive_int_list,
        default=[],
        help="comma-separated batches, each run with and without checkpointing (8,32); "
        "default: --batch",
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default="out/bench/train_checkpointing.json")
    p = sub.add_parser("data", help="the data pipeline alone, per core")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument(
        "--gpu-rate",
        type=float,
        default=0.0,
        help="training samples/s measured on a GPU (gives cores per GPU)",
    )
    p.add_argument("--out", default="out/bench/train_data.json")
    p = sub.add_parser("memory", help="parameter, gradient, optimiser and activation bytes")
    p.add_argument("--arch", default="published", choices=("published", "mini", "tiny"))
    p.add_argument("--size", type=positive_int, default=512, help="training resolution, px")
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--lora-rank", type=positive_int, default=16)
    p.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="GiB kept free for the CUDA context and allocator fragmentation",
    )
    p.add_argument("--device", default="auto", help="a GPU also measures each peak")
    p.add_argument("--out", default="out/bench/train_memory.json")
    w = sub.add_parser("worker", help="internal: one measured run in this process")
    w.add_argument("side", choices=SIDES)
    add_run_options(w, "mini", 64, 16)
    w.add_argument("--checkpointing", action="store_true")
    args = parser.parse_args(argv)
    if args.command != "data":  # every other command runs the trainer or accelerate
        from train.preflight import PreflightError, require_training_extra

        try:
            require_training_extra()
        except PreflightError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "worker":
        if args.side == "minimal":
            result = worker_minimal(args)
        else:
            ema = TRAINER_SIDES[args.side][0]
            result = worker_ours(args, ema=ema, checkpointing=args.checkpointing, side=args.side)
        print(json.dumps(result))
        return 0
    commands = {
        "throughput": cmd_throughput,
        "checkpointing": cmd_checkpointing,
        "data": cmd_data,
        "memory": cmd_memory,
    }
    write_report(args.out, commands[args.command](args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
