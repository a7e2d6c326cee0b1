"""Dataset readers on small fixtures, corrupt-data handling, deterministic resumable order."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from train_support import make_images, tiny_config, write_jsonl

from train.augment import PairSpec
from train.dataset import DataPosition, EpochBatchSampler, PairDataset
from train.readers import (
    BoxFilter,
    DatasetError,
    read_coco,
    read_dataset,
    read_jsonl,
    read_openimages,
)

SPEC = PairSpec(resolution=64, reference_size=32)


def test_coco_reader_filters_area_crowd_class_and_degenerate(tmp_path):
    ann = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 100},
            {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100},
        ],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"image_id": 1, "bbox": [10, 10, 40, 40], "category_id": 1},  # area 0.16: kept
            {"image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 1},  # 0.0025: too small
            {"image_id": 1, "bbox": [0, 0, 95, 95], "category_id": 1},  # 0.90: too large
            {"image_id": 1, "bbox": [10, 10, 0, 20], "category_id": 1},  # degenerate
            {"image_id": 2, "bbox": [10, 10, 50, 50], "category_id": 1, "iscrowd": 1},
            {"image_id": 2, "bbox": [10, 10, 50, 50], "category_id": 2},  # cat
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(ann))
    records, stats = read_coco(path, tmp_path, BoxFilter(classes=("dog",)))
    assert [r.path.name for r in records] == ["a.jpg"]
    assert records[0].boxes == [(10.0, 10.0, 50.0, 50.0)]
    assert records[0].labels == ["dog"]
    assert stats.area_filtered == 2 and stats.degenerate == 1
    assert stats.crowd == 1 and stats.class_filtered == 1
    records, _ = read_coco(path, tmp_path, BoxFilter())
    assert sum(len(r.boxes) for r in records) == 2  # the cat now counts


def test_openimages_reader_keeps_normalised_boxes_and_skip_list(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text(
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded\n"
        "aaa,x,/m/dog,1,0.1,0.5,0.2,0.6,0\n"
        "aaa,x,/m/dog,1,0.0,0.05,0.0,0.05,0\n"
        "bbb,x,/m/cat,1,0.1,0.9,0.1,0.9,0\n"
        "ccc,x,/m/dog,1,0.1,0.5,0.1,0.5,0\n"
    )
    records, stats = read_openimages(path, tmp_path / "img", BoxFilter(skip_images=("ccc",)))
    assert [r.path.name for r in records] == ["aaa.jpg", "bbb.jpg"]
    assert records[0].boxes == [pytest.approx((0.1, 0.2, 0.5, 0.6))]
    assert records[0].width == 0  # normalised until the image is opened
    assert stats.area_filtered == 1 and stats.skipped_images == 1
    with pytest.raises(DatasetError, match="lacks the OpenImages columns"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        read_openimages(bad, tmp_path, BoxFilter())


def test_jsonl_reader_takes_boxes_and_masks_and_counts_unreadable(tmp_path):
    entries = make_images(tmp_path, 2)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (5, 6, 25, 30))
    mask.save(tmp_path / "m.png")
    entries[1] = {"image": entries[1]["image"], "mask": "m.png"}
    entries.append({"image": "missing.png", "boxes": [[0, 0, 10, 10]]})
    path = write_jsonl(tmp_path / "ann.jsonl", entries)
    records, stats = read_jsonl(path, tmp_path, BoxFilter(min_area=0.0))
    assert len(records) == 2
    assert records[1].boxes == [(5.0, 6.0, 25.0, 30.0)]
    assert records[0].width == 64
    assert stats.unreadable == 1


def test_jsonl_reader_rejects_malformed_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"boxes": []}\n')
    with pytest.raises(DatasetError, match=r"a.jsonl:1"):
        read_jsonl(path, tmp_path, BoxFilter())


def test_empty_dataset_fails_before_any_model_loads(tmp_path, monkeypatch):
    import train.trainer as trainer

    path = write_jsonl(tmp_path / "ann.jsonl", make_images(tmp_path, 2))
    config = tiny_config(tmp_path / "run", path, data={"min_area": 0.9, "max_area": 1.0})

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(trainer, "build_model", no_model)
    with pytest.raises(DatasetError, match="no usable image after filtering"):
        trainer.Trainer(config).setup()


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    entries = make_images(tmp_path, 3)
    (tmp_path / entries[0]["image"]).write_bytes(b"not a png at all")
    records, _ = read_dataset(
        "jsonl", write_jsonl(tmp_path / "a.jsonl", entries), "", BoxFilter(min_area=0.0)
    )
    # The header of the corrupt file cannot be read: the reader already drops it.
    assert len(records) == 2
    # Corruption found only when decoding (a truncated file) is skipped by the dataset.
    data = (tmp_path / entries[1]["image"]).read_bytes()
    (tmp_path / entries[1]["image"]).write_bytes(data[: len(data) // 3])
    dataset = PairDataset(records, SPEC, seed=0)
    item = dataset[(0, 0)]
    assert item["skipped"] == 1
    assert item["image"].shape == (3, 64, 64)


def test_pairs_are_a_pure_function_of_seed_epoch_and_index(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", make_images(tmp_path, 3))
    records, _ = read_dataset("jsonl", path, "", BoxFilter(min_area=0.0))
    a = PairDataset(records, SPEC, seed=1)
    b = PairDataset(records, SPEC, seed=1)
    assert torch.equal(a[(2, 1)]["reference"], b[(2, 1)]["reference"])
    assert not torch.equal(a[(2, 1)]["reference"], a[(3, 1)]["reference"])


def test_openimages_boxes_are_scaled_to_pixels_when_loaded(tmp_path):
    make_images(tmp_path, 1)
    (tmp_path / "img000.png").rename(tmp_path / "abc.jpg")
    path = tmp_path / "b.csv"
    path.write_text("ImageID,LabelName,XMin,XMax,YMin,YMax\nabc,/m/x,0.25,0.75,0.25,0.75\n")
    records, _ = read_openimages(path, tmp_path, BoxFilter())
    item = PairDataset(records, SPEC, seed=0)[(0, 0)]
    assert item["skipped"] == 0 and item["keep_mask"].min() == 0.0


def test_sampler_shards_ranks_disjointly_and_resumes_mid_epoch():
    ranks = [list(zip(range(6), EpochBatchSampler(10, 2, 0, r, 2), strict=False)) for r in range(2)]
    first_epoch = [k for _, batch in ranks[0][:2] for k in batch] + [
        k for _, batch in ranks[1][:2] for k in batch
    ]
    assert len({k for k in first_epoch}) == 8  # 10 images -> 2 batches x 2 ranks x 2, disjoint
    full = [b for _, b in zip(range(8), EpochBatchSampler(10, 2, 0), strict=False)]
    resumed = EpochBatchSampler(10, 2, 0, start=DataPosition(epoch=1, batch=1))
    tail = [b for _, b in zip(range(2), resumed, strict=False)]
    assert tail == full[6:8]  # 5 batches per epoch: epoch 1, batch 1 is the 7th
    assert all(key[0] == 1 for key in tail[0])
