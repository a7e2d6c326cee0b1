"""Self-CPU time of an edit by region and by operator, for ``python -m bench.profile edit
--device cpu``.

Regions (the UNet, VAE encode and decode, the exemplar encoder and its preprocessing, the
scheduler, the progress bar, and ``other``: whatever a side does outside them) are marked from
outside, by wrapping the same classes' methods for every side (editor, diffusers' pipeline, the
node in ComfyUI) in ``record_function`` for the profiled window only, so the measured code carries
no profiling hooks and the sides' own overhead can be compared op by op.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter, defaultdict

import torch

REGION_PREFIX = "region:"  # the record_function label of a marked region
OTHER = "other"  # self-CPU time outside every marked region


def region_targets() -> list[tuple[object, str, str]]:
    """(owner, attribute, region): the methods and functions whose calls mark a region, the same
    classes for every side (those of a side not installed are left out)."""
    import diffusers
    from transformers import CLIPImageProcessor

    from exemplar_core import editor
    from exemplar_core.encoder import ExemplarEncoder

    targets: list[tuple[object, str, str]] = [
        (diffusers.UNet2DConditionModel, "forward", "unet"),
        (diffusers.AutoencoderKL, "encode", "vae_encode"),
        (diffusers.AutoencoderKL, "decode", "vae_decode"),
        (ExemplarEncoder, "forward", "exemplar_encoder"),
        (editor, "frame_exemplar", "exemplar_preprocess"),
        (editor, "normalize", "exemplar_preprocess"),
        (CLIPImageProcessor, "__call__", "exemplar_preprocess"),
    ]
    for name in (
        "PNDMScheduler",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "EulerAncestralDiscreteScheduler",
    ):
        scheduler = getattr(diffusers, name)
        for method in ("set_timesteps", "scale_model_input", "step"):
            targets.append((scheduler, method, "scheduler"))
    from tqdm import std

    for method in ("__init__", "update", "close"):
        targets.append((std.tqdm, method, "progress"))
    with contextlib.suppress(ImportError):
        from diffusers.pipelines.deprecated.paint_by_example.image_encoder import (
            PaintByExampleImageEncoder,
        )

        targets.append((PaintByExampleImageEncoder, "forward", "exemplar_encoder"))
    with contextlib.suppress(ImportError):  # ComfyUI's own UNet and VAE (the node side)
        import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
        import comfy.sd

        targets += [
            (openaimodel.UNetModel, "forward", "unet"),
            (comfy.sd.VAE, "encode", "vae_encode"),
            (comfy.sd.VAE, "decode", "vae_decode"),
        ]
    return targets


def _marked(fn, region: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(REGION_PREFIX + region):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def marked_regions(targets: list[tuple[object, str, str]]):
    """Wrap each target in a ``record_function`` of its region for the duration; put back after."""
    missing = object()
    saved = []
    try:
        for owner, attribute, region in targets:
            saved.append((owner, attribute, vars(owner).get(attribute, missing)))
            setattr(owner, attribute, _marked(getattr(owner, attribute), region))
        yield
    finally:
        for owner, attribute, original in reversed(saved):
            if original is missing:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)


def _region_of(event) -> str:
    """The innermost marked region around a profiler event (``OTHER`` when none)."""
    while event is not None:
        if event.name.startswith(REGION_PREFIX):
            return event.name[len(REGION_PREFIX) :]
        event = event.cpu_parent
    return OTHER


class RegionProbe:
    """The profiler's CPU activity over one window, with the regions of ``region_targets``
    marked: self-CPU time by region and by operator (``start()`` ... ``stop()``)."""

    def __init__(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.profiler = profile(activities=[ProfilerActivity.CPU])
        self._regions = marked_regions(region_targets())
        self.seconds = 0.0

    def start(self) -> None:
        self._regions.__enter__()
        self.profiler.start()
        self._start = time.perf_counter()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._start
        self.profiler.stop()
        self._regions.__exit__(None, None, None)

    def tables(self) -> tuple[dict, Counter, Counter, Counter, Counter]:
        """(region -> {"ms", "calls"}, op -> self ms, op -> calls, and the same two outside the
        UNet) from the recorded events."""
        regions: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "calls": 0})
        ops: Counter[str] = Counter()
        calls: Counter[str] = Counter()
        outside_unet: Counter[str] = Counter()
        outside_calls: Counter[str] = Counter()
        for event in self.profiler.events():
            region = _region_of(event)
            ms = event.self_cpu_time_total / 1e3
            regions[region]["ms"] += ms
            if event.name.startswith(REGION_PREFIX):
                if event.name == REGION_PREFIX + region:
                    regions[region]["calls"] += 1
                continue
            ops[event.name] += ms
            calls[event.name] += 1
            if region != "unet":
                outside_unet[event.name] += ms
                outside_calls[event.name] += 1
        return dict(regions), ops, calls, outside_unet, outside_calls

    def report(self, top: int) -> dict:
        regions, ops, calls, outside_unet, outside_calls = self.tables()
        recorded_ms = sum(r["ms"] for r in regions.values())
        wall_ms = self.seconds * 1e3
        print(
            f"measured wall time {self.seconds:.3f} s; self-CPU time recorded "
            f"{recorded_ms / 1e3:.3f} s (the rest, {max(wall_ms - recorded_ms, 0) / 1e3:.3f} s, "
            f"is Python between operators outside every region)"
        )
        print(f"{'region':<22}{'self-CPU ms':>14}{'share':>8}{'calls':>8}")
        ordered = sorted(regions.items(), key=lambda kv: -kv[1]["ms"])
        for name, row in ordered:
            share = row["ms"] / wall_ms if wall_ms else 0.0
            print(f"{name:<22}{row['ms']:>14.1f}{100 * share:>7.1f}%{row['calls']:>8}")
        tables = (
            ("operators", ops, calls),
            ("operators outside the UNet", outside_unet, outside_calls),
        )
        for title, table, counts in tables:
            print(f"{'self-CPU ms':>12}{'calls':>8}  {title}")
            for name, ms in table.most_common(top):
                print(f"{ms:>12.1f}{counts[name]:>8}  {name[:100]}")
        return {
            "seconds": self.seconds,
            "recorded_cpu_seconds": recorded_ms / 1e3,
            "regions": {name: row for name, row in ordered},
            "top_ops": [{"ms": ms, "calls": calls[n], "name": n} for n, ms in ops.most_common(top)],
            "top_ops_outside_unet": [
                {"ms": ms, "calls": outside_calls[n], "name": n}
                for n, ms in outside_unet.most_common(top)
            ],
        }
