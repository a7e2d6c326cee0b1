"""What the frozen VAE and CLIP tower compute per example, kept for the epochs it comes back.

Under the official recipe nothing repeats: every epoch draws a new crop, box expansion, mask
and reference augmentation for every image (train/augment.py), so the target and masked-image
latents and the reference's pooled tower output are new every epoch. With ``data.variants`` K
the examples of epoch e are those of epoch e mod K (train/dataset.py, ``EpochBatchSampler``),
and ``data.cache`` keeps, per (stream, variant, index): the VAE posterior's mean and std of the
target and of the masked image (not a sample: the sample is drawn at train time from the noise
generator, in the order an uncached run draws it), the keep mask at latent size and the pooled
tower output. The cache is not saved in checkpoints: a resumed run recomputes each example the
first time it meets it, from the pixels the dataset reproduces exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import ConfigError, DataSection

log = logging.getLogger("train")

Key = tuple[int, int, int]  # (stream, variant, index): stream 0 the pairs, 1 the prior samples


@dataclass
class FrozenOutputs:
    """The frozen parts' outputs for a batch: VAE posterior mean and std of the target and of the
    masked image [B, C, h, w] (unscaled latents), keep mask at latent size [B, 1, h, w] (1 = keep)
    and the tower's pooled output [B, W]."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    masked_mean: torch.Tensor
    masked_std: torch.Tensor
    keep_latent: torch.Tensor
    pooled: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def draw(self, generator: torch.Generator, scale: float) -> tuple[torch.Tensor, ...]:
        """(latents fp32, masked latents, keep_latent, pooled fp32): the two posterior samples
        drawn from ``generator`` in the order ``encode_latent`` draws them, scaled."""
        latents = posterior_sample(self.latent_mean, self.latent_std, generator) * scale
        masked = posterior_sample(self.masked_mean, self.masked_std, generator) * scale
        return latents.float(), masked, self.keep_latent, self.pooled.float()


def posterior_sample(
    mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """diffusers' ``DiagonalGaussianDistribution.sample``: the same draw, the same bits."""
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise


def compute_frozen(model, batch: dict, device: torch.device) -> FrozenOutputs:
    """Run the frozen VAE encoder and CLIP tower on a batch of pixel examples (no sampling)."""
    target = model.encode_posterior(batch["image"].to(device, non_blocking=True))
    masked = model.encode_posterior(batch["masked_image"].to(device, non_blocking=True))
    keep = F.interpolate(
        batch["keep_mask"].to(device, non_blocking=True),
        size=target.mean.shape[-2:],
        mode="bilinear",
    )
    pooled = model.encoder.pooled(batch["reference"].to(device, non_blocking=True))
    return FrozenOutputs(target.mean, target.std, masked.mean, masked.std, keep, pooled)


class KeyedDataset(Dataset):
    """A dataset's examples with their cache key (``cache_key`` [3] int64) added."""

    def __init__(self, base: Dataset, stream: int) -> None:
        self.base, self.stream = base, stream

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        item = self.base[key]
        item["cache_key"] = torch.tensor([self.stream, *key], dtype=torch.int64)
        return item


class FrozenCache:
    """Frozen outputs per example key, in RAM on ``device``; one per process (each rank caches
    the examples it draws)."""

    def __init__(
        self, device: torch.device, train_device: torch.device, max_gb: float, variants: int
    ) -> None:
        self.device, self.train_device = device, train_device
        self.max_gb, self.variants = max_gb, variants
        self.entries: dict[Key, tuple[torch.Tensor, ...]] = {}
        self.bound = 0  # most entries this process can hold: variants x its examples per stream
        self.entry_bytes = 0  # known from the first computed batch
        self.computed = 0  # examples run through the frozen parts
        self.reused = 0  # examples taken from the cache

    @classmethod
    def for_config(cls, data: DataSection, train_device: torch.device) -> FrozenCache | None:
        if data.cache == "off":
            return None
        device = train_device if data.cache == "device" else torch.device("cpu")
        return cls(device, train_device, data.cache_max_gb, data.variants)

    def keyed(self, dataset: Dataset, stream: int, world_size: int) -> KeyedDataset:
        """``dataset`` as the cache's stream ``stream``; counts its examples in the size bound
        (with variants each rank draws a fixed share of them)."""
        self.bound += self.variants * math.ceil(len(dataset) / world_size)
        return KeyedDataset(dataset, stream)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for row in self.entries.values() for t in row)

    def counts(self) -> dict[str, int]:
        """This process's examples computed and reused since it started, and the bytes held."""
        return {"computed": self.computed, "reused": self.reused, "bytes": self.nbytes()}

    def _check_size(self, outputs: FrozenOutputs) -> None:
        """Once the first batch gives the bytes per example: log the estimate, refuse when it is
        over ``data.cache_max_gb``."""
        size = outputs.latent_mean.shape[0]
        self.entry_bytes = sum(t.numel() * t.element_size() for t in outputs.tensors()) // size
        total = self.bound * self.entry_bytes
        amount = f"{total / 2**30:.2f} GiB" if total >= 2**30 else f"{total / 2**20:.2f} MiB"
        estimate = (
            f"{self.bound} examples ({self.variants} variants) x {self.entry_bytes / 2**10:.1f} "
            f"KiB = {amount}"
        )
        if total > self.max_gb * 2**30:
            raise ConfigError(
                f"data.cache: the frozen-output cache would grow to {estimate} on "
                f"{self.device.type}, over data.cache_max_gb = {self.max_gb}; lower "
                "data.variants, raise data.cache_max_gb (with the memory to hold it) or set "
                "data.cache = 'off'"
            )
        log.info("frozen-output cache on %s: up to %s", self.device.type, estimate)

    def outputs(self, batch: dict, compute: Callable[[dict], FrozenOutputs]) -> FrozenOutputs:
        """The frozen outputs of ``batch`` (keys in ``batch['cache_key']``): cached rows reused,
        the others computed by ``compute`` (on the rows that miss only) and kept."""
        keys: list[Key] = [tuple(k) for k in batch["cache_key"].tolist()]
        missing = [j for j, key in enumerate(keys) if key not in self.entries]
        self.computed += len(missing)
        self.reused += len(keys) - len(missing)
        if missing:
            whole = len(missing) == len(keys)
            if not whole:
                batch = {k: v[missing] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            fresh = compute(batch)
            if not self.entry_bytes:
                self._check_size(fresh)
            stored = [t.to(self.device) for t in fresh.tensors()]
            for row, j in enumerate(missing):
                self.entries[keys[j]] = tuple(t[row].clone() for t in stored)
            if whole:
                return fresh
        rows = [self.entries[key] for key in keys]
        return FrozenOutputs(
            *(
                torch.stack(column).to(self.train_device, non_blocking=True)
                for column in zip(*rows, strict=True)
            )
        )
