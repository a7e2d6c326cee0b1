"""Box-annotation readers: COCO instances JSON, OpenImages box CSV, simple JSONL.

Each reader returns image records with the boxes that pass the area filter (normalised area in
[min_area, max_area], official default [0.02, 0.8]) and a ``ReadStats`` that counts what was
dropped and why. Nothing here opens image pixels; JSONL reads image headers for the sizes.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

Box = tuple[float, float, float, float]


class DatasetError(ValueError):
    """The dataset cannot be used (missing file, malformed annotations, nothing left)."""


@dataclass
class ImageRecord:
    """One image and its usable boxes, in pixels (x0, y0, x1, y1; x1/y1 exclusive)."""

    path: Path
    boxes: list[Box]
    width: int
    height: int
    labels: list[str] = field(default_factory=list)  # one per box, may be empty strings


@dataclass
class ReadStats:
    images: int = 0
    boxes: int = 0
    kept_boxes: int = 0
    degenerate: int = 0  # zero/negative size or outside the image
    area_filtered: int = 0
    class_filtered: int = 0
    crowd: int = 0
    skipped_images: int = 0  # skip list
    unreadable: int = 0  # JSONL images whose header could not be read
    images_without_box: int = 0

    def summary(self) -> str:
        return (
            f"{self.images} images, {self.boxes} boxes: kept {self.kept_boxes}; dropped "
            f"{self.degenerate} degenerate, {self.area_filtered} outside the area range, "
            f"{self.class_filtered} other classes, {self.crowd} crowd; {self.skipped_images} "
            f"images on the skip list, {self.unreadable} unreadable, "
            f"{self.images_without_box} without a usable box"
        )


@dataclass(frozen=True)
class BoxFilter:
    min_area: float = 0.02
    max_area: float = 0.8
    classes: tuple[str, ...] = ()
    skip_images: tuple[str, ...] = ()
    skip_crowd: bool = True


def _keep_box(
    box: Box, width: int, height: int, filt: BoxFilter, stats: ReadStats, min_side: float = 1.0
) -> Box | None:
    """Clip to the image, then apply the degenerate and area checks (counting drops)."""
    x0, y0, x1, y1 = box
    x0, y0 = max(x0, 0.0), max(y0, 0.0)
    x1, y1 = min(x1, float(width)), min(y1, float(height))
    if not (x1 - x0 >= min_side and y1 - y0 >= min_side):
        stats.degenerate += 1
        return None
    area = (x1 - x0) * (y1 - y0) / float(width * height)
    if not filt.min_area <= area <= filt.max_area:
        stats.area_filtered += 1
        return None
    return x0, y0, x1, y1


def _finish(records: dict[str, ImageRecord], stats: ReadStats) -> list[ImageRecord]:
    out = []
    for record in records.values():
        if record.boxes:
            out.append(record)
        else:
            stats.images_without_box += 1
    stats.kept_boxes = sum(len(r.boxes) for r in out)
    return out


def _class_wanted(label: Iterable[str], filt: BoxFilter) -> bool:
    return not filt.classes or any(name in filt.classes for name in label)


def _load_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"{what} {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{what} {path} is not valid JSON: {exc}") from exc


def read_coco(path: Path, image_root: Path, filt: BoxFilter) -> tuple[list[ImageRecord], ReadStats]:
    """COCO instances JSON (``images``, ``annotations`` with ``bbox`` = [x, y, w, h] pixels)."""
    data = _load_json(path, "COCO annotation file")
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DatasetError(
            f"{path} is not a COCO instances file: expected 'images' and 'annotations' lists"
        )
    categories = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
    stats = ReadStats()
    records: dict[str, ImageRecord] = {}
    skip = set(filt.skip_images)
    for image in data["images"]:
        stats.images += 1
        name = str(image["file_name"])
        if str(image["id"]) in skip or Path(name).stem in skip:
            stats.skipped_images += 1
            continue
        records[str(image["id"])] = ImageRecord(
            image_root / name, [], int(image["width"]), int(image["height"])
        )
    for ann in data["annotations"]:
        stats.boxes += 1
        record = records.get(str(ann["image_id"]))
        if record is None:
            continue
        if filt.skip_crowd and ann.get("iscrowd", 0):
            stats.crowd += 1
            continue
        category = ann.get("category_id")
        label = (str(category), categories.get(category, ""))
        if not _class_wanted(label, filt):
            stats.class_filtered += 1
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        box = _keep_box((x, y, x + w, y + h), record.width, record.height, filt, stats)
        if box is not None:
            record.boxes.append(box)
            record.labels.append(label[1] or label[0])
    return _finish(records, stats), stats


OPENIMAGES_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")


def read_openimages(
    path: Path, image_root: Path, filt: BoxFilter
) -> tuple[list[ImageRecord], ReadStats]:
    """OpenImages box CSV (normalised XMin/XMax/YMin/YMax); images are ``image_root/<ImageID>.jpg``.

    Pixel sizes are unknown until an image is opened: boxes are stored normalised to a 1x1 image
    (width = height = 0 marks that) and scaled when the image is loaded.
    """
    stats = ReadStats()
    records: dict[str, ImageRecord] = {}
    skip = set(filt.skip_images)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except FileNotFoundError as exc:
        raise DatasetError(f"OpenImages box CSV {path} does not exist") from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in OPENIMAGES_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"{path} lacks the OpenImages columns {missing}; expected a box CSV such as "
                "oidv6-train-annotations-bbox.csv"
            )
        for row in reader:
            stats.boxes += 1
            image_id = row["ImageID"]
            if image_id in skip:
                if image_id not in records:
                    stats.skipped_images += 1
                    records[image_id] = ImageRecord(image_root / f"{image_id}.jpg", [], 0, 0)
                continue
            record = records.get(image_id)
            if record is None:
                record = ImageRecord(image_root / f"{image_id}.jpg", [], 0, 0)
                records[image_id] = record
            if not _class_wanted((row["LabelName"],), filt):
                stats.class_filtered += 1
                continue
            try:
                box = tuple(float(row[k]) for k in ("XMin", "YMin", "XMax", "YMax"))
            except ValueError:
                stats.degenerate += 1
                continue
            # Normalised: the area is the share directly; any positive size is kept here and
            # re-checked in pixels when the image is loaded.
            kept = _keep_box(box, 1, 1, filt, stats, min_side=1e-6)
            if kept is not None:
                record.boxes.append(kept)
                record.labels.append(row["LabelName"])
    stats.images = len(records)
    # Images only on the skip list are not "without a box".
    for image_id in skip:
        records.pop(image_id, None)
    return _finish(records, stats), stats


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; raises OSError when it cannot be read."""
    with Image.open(path) as image:
        return image.size


def mask_box_from_file(path: Path) -> Box | None:
    """Bounding box of the pixels >= 50% in a mask image (white = object), or None if empty."""
    import numpy as np
    import torch

    from exemplar_core.masks import mask_box

    with Image.open(path) as image:
        level = np.asarray(image.convert("L"))
    box = mask_box(torch.tensor(level), threshold=128)  # 50% of 255, rounded up
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return float(x0), float(y0), float(x1), float(y1)


def read_jsonl(
    path: Path, image_root: Path, filt: BoxFilter
) -> tuple[list[ImageRecord], ReadStats]:
    """JSONL, one image per line: ``{"image": path, "boxes": [[x0, y0, x1, y1], ...]}`` in pixels.

    Instead of (or besides) boxes a line may give ``"mask": path`` (white = the object) or
    ``"masks": [...]``; their bounding boxes are used. Optional ``"labels"``: one per box.
    """
    stats = ReadStats()
    records: dict[str, ImageRecord] = {}
    skip = set(filt.skip_images)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DatasetError(f"JSONL annotation file {path} does not exist") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            image_path = image_root / entry["image"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(
                f'{path}:{number}: expected {{"image": path, "boxes": [[x0, y0, x1, y1]]}}, '
                f"got {line[:120]!r}"
            ) from exc
        stats.images += 1
        if Path(entry["image"]).stem in skip:
            stats.skipped_images += 1
            continue
        try:
            width, height = image_size(image_path)
        except (OSError, ValueError):
            stats.unreadable += 1
            continue
        boxes = [tuple(float(v) for v in b) for b in entry.get("boxes", [])]
        masks = entry.get("masks", []) + ([entry["mask"]] if "mask" in entry else [])
        for mask in masks:
            try:
                box = mask_box_from_file(image_root / mask)
            except (OSError, ValueError):
                stats.unreadable += 1
                continue
            if box is None:
                stats.degenerate += 1
                continue
            boxes.append(box)
        labels = [str(v) for v in entry.get("labels", [])]
        record = ImageRecord(image_path, [], width, height)
        for index, box in enumerate(boxes):
            stats.boxes += 1
            if len(box) != 4:
                stats.degenerate += 1
                continue
            label = labels[index] if index < len(labels) else ""
            if filt.classes and label not in filt.classes:
                stats.class_filtered += 1
                continue
            kept = _keep_box(box, width, height, filt, stats)  # type: ignore[arg-type]
            if kept is not None:
                record.boxes.append(kept)
                record.labels.append(label)
        records[f"{number}"] = record
    return _finish(records, stats), stats


READERS = {"coco": read_coco, "openimages": read_openimages, "jsonl": read_jsonl}


def read_dataset(
    fmt: str, path: str | Path, image_root: str | Path, filt: BoxFilter
) -> tuple[list[ImageRecord], ReadStats]:
    """Read any supported format; ``image_root`` defaults to the annotation file's folder."""
    if fmt not in READERS:
        raise DatasetError(f"unknown dataset format {fmt!r}; choose one of {sorted(READERS)}")
    file = Path(path)
    root = Path(image_root) if image_root else file.parent
    return READERS[fmt](file, root, filt)


def require_records(records: list[ImageRecord], stats: ReadStats, what: str, path: str) -> None:
    """Fail clearly, before any model loads, when filtering left nothing to train on."""
    if not records:
        raise DatasetError(
            f"{what} {path} has no usable image after filtering ({stats.summary()}). Check the "
            "image_root, the box format (pixels x0, y0, x1, y1), data.min_area/max_area and "
            "data.classes"
        )
