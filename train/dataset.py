"""Self-reference pairs from box-annotated images, with a resumable, rank-sharded order.

Every example is a pure function of (seed, epoch, image index): the box choice (one random box
per image per epoch) and all augmentation draws come from a ``random.Random`` seeded with those,
so a resumed run sees exactly the data an uninterrupted run would, whatever the worker count.
Unreadable images and boxes that turn out degenerate are skipped (the next image is used) and
counted in the batch (``skipped``) for the logs; they never stop a run.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .augment import PairSpec, ReferenceAugment, make_pair
from .config import DataSection
from .readers import ImageRecord

MAX_SKIPS = 32  # consecutive bad images before giving up on a sample (the data is mostly bad)


class SkipSample(Exception):
    """An image or box that cannot give a pair (counted, not fatal)."""


def pair_spec(data: DataSection, reference_size: int, mean, std) -> PairSpec:
    return PairSpec(
        resolution=data.resolution,
        reference_size=reference_size,
        box_expansion=data.box_expansion,
        bezier_p=data.bezier_p,
        bezier_jitter=data.bezier_jitter,
        bezier_dedupe_quirk=data.bezier_dedupe_quirk,
        zoom_share=data.zoom_share,
        antialias=data.antialias,
        reference=ReferenceAugment(
            pad=data.ref_pad,
            hflip_p=data.hflip_p,
            rotate_p=data.rotate_p,
            rotate_limit=data.rotate_limit,
            blur_p=data.blur_p,
            warp_p=data.warp_p,
            warp_shift=data.warp_shift,
            antialias=data.antialias,
        ),
        clip_mean=tuple(mean),
        clip_std=tuple(std),
    )


def example_seed(seed: int, epoch: int, index: int, salt: str = "") -> int:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def load_image(record: ImageRecord) -> torch.Tensor:
    """[3, H, W] float 0..1; raises SkipSample for unreadable or truncated files."""
    try:
        with Image.open(record.path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as exc:
        raise SkipSample(f"cannot read {record.path}: {exc}") from exc
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


def pixel_box(record: ImageRecord, box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel box (the official code truncates), scaled when stored normalised."""
    if record.width == 0:  # OpenImages: normalised until the image size is known
        box = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise SkipSample(f"box {box} of {record.path} is degenerate at {width}x{height}")
    return x0, y0, x1, y1


class PairDataset(Dataset):
    """Indexed by ``(epoch, image index)``; returns a dict of tensors for ``collate_pairs``."""

    def __init__(
        self, records: list[ImageRecord], spec: PairSpec, seed: int, salt: str = ""
    ) -> None:
        self.records = records
        self.spec = spec
        self.seed = seed
        self.salt = salt

    def __len__(self) -> int:
        return len(self.records)

    def make(self, epoch: int, index: int) -> dict:
        record = self.records[index]
        rng = random.Random(example_seed(self.seed, epoch, index, self.salt))
        box_index = rng.randrange(len(record.boxes))
        image = load_image(record)
        _, height, width = image.shape
        box = pixel_box(record, record.boxes[box_index], width, height)
        pair = make_pair(image, box, rng, self.spec)
        return {
            "image": pair.image,
            "keep_mask": pair.keep_mask,
            "masked_image": pair.masked_image,
            "reference": pair.reference,
        }

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        skipped = 0
        for attempt in range(min(MAX_SKIPS, len(self.records))):
            try:
                item = self.make(epoch, (index + attempt) % len(self.records))
            except SkipSample:
                skipped += 1
                continue
            item["skipped"] = skipped
            return item
        raise RuntimeError(
            f"{skipped} images in a row could not be read or had no usable box (starting at "
            f"index {index}); check data.image_root and the annotation file"
        )


def collate_pairs(items: list[dict]) -> dict:
    """Stack the pairs; ``skipped`` counts unreadable records replaced, and ``image_sum`` (the
    target pixels' float64 sum, for the trainer's per-rank data checksum) is computed here, in
    the DataLoader worker, off the training loop's thread."""
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "skipped"}
    batch["skipped"] = sum(it["skipped"] for it in items)
    batch["image_sum"] = float(batch["image"].sum(dtype=torch.float64))
    return batch


@dataclass
class DataPosition:
    """Where the data stream is: the epoch and the micro-batches of it already consumed."""

    epoch: int = 0
    batch: int = 0


class EpochBatchSampler(Sampler):
    """Infinite batches of ``(epoch, index)`` keys for one rank, starting at a position.

    Each epoch is a seeded permutation of the images, trimmed to a multiple of
    ``world_size * batch_size`` and dealt round-robin to the ranks. With ``variants`` K > 0 the
    keys carry ``epoch mod K`` (the examples of epoch e are those of epoch e mod K; the order
    still changes every epoch), and several ranks each keep a fixed share of the images, so an
    example comes back to the rank that cached its frozen outputs (``data.cache``).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: DataPosition | None = None,
        variants: int = 0,
    ) -> None:
        per_step = batch_size * world_size
        if size < per_step:
            raise ValueError(
                f"{size} training images cannot fill one batch of {batch_size} on {world_size} "
                f"process(es); add images or lower train.batch_size"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.start = start or DataPosition()
        self.variants = variants

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def shard(self) -> list[int]:
        """The images this rank can draw: all of them, or with variants on several ranks a fixed
        share (a seeded permutation dealt round-robin)."""
        if not self.variants or self.world_size == 1:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 100003 - 1)
        order = torch.randperm(self.size, generator=generator).tolist()
        return order[self.rank :: self.world_size]

    def epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        if self.variants and self.world_size > 1:
            shard = self.shard()
            order = torch.randperm(len(shard), generator=generator).tolist()
            return [shard[i] for i in order[: self.batches_per_epoch * self.batch_size]]
        order = torch.randperm(self.size, generator=generator).tolist()
        usable = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = self.start.epoch, self.start.batch
        while True:
            mine = self.epoch_order(epoch)
            key = epoch % self.variants if self.variants else epoch
            for b in range(first, self.batches_per_epoch):
                chunk = mine[b * self.batch_size : (b + 1) * self.batch_size]
                yield [(key, i) for i in chunk]
            epoch, first = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; the iterator itself never ends
        return self.batches_per_epoch


class RepeatedDataset(Dataset):
    """A few subject photos seen ``repeats`` times per epoch (each with fresh augmentation)."""

    def __init__(self, base: PairDataset, repeats: int) -> None:
        self.base, self.repeats = base, max(repeats, 1)

    def __len__(self) -> int:
        return len(self.base) * self.repeats

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        # Distinct repeats get distinct draws: fold the repeat number into the epoch key.
        repeat, base_index = divmod(index, len(self.base))
        return self.base[(epoch * self.repeats + repeat, base_index)]
