"""The tower stage (the miniature world's CLIP stand-in) and loading its file as model.clip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from train import synthetic
from train.config import load_config
from train.model_init import build_model, read_clip_tower
from train.tower import TowerDataError, read_objects, tower_config, train_tower
from train.tower import main as tower_main


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    synthetic.main(
        [
            "--out",
            str(out),
            "--train",
            "12",
            "--test",
            "2",
            "--eval",
            "1",
            "--size",
            "48",
            "--seed",
            "3",
        ]
    )
    return out / "train.jsonl"


def test_read_objects_pairs_each_box_with_its_attributes(scenes):
    images, objects = read_objects(scenes)
    lines = [json.loads(x) for x in scenes.read_text().splitlines()]
    assert len(images) == len(lines)
    assert len(objects) == sum(len(x["boxes"]) for x in lines)
    index, box, attrs = objects[0]
    assert box == tuple(lines[0]["boxes"][0]) and attrs == lines[0]["objects"][0]
    assert images[index].exists()


def test_tower_stage_learns_and_writes_a_loadable_tower(scenes, tmp_path):
    config = tower_config("tiny")
    torch.manual_seed(0)
    path = train_tower(
        scenes, tmp_path / "tower", config, steps=30, batch_size=16, lr=3e-3, log_every=10
    )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert all(k.startswith("tower.") for k in keys)
    assert json.loads(meta["encoder_config"])["width"] == config.width
    accuracy = json.loads(meta["held_out_accuracy"])
    assert set(accuracy) == {"color", "shape", "texture"}
    state = read_clip_tower(path)
    assert "conv1.weight" in state

    # init = random with model.clip: the tower is the trained one, the rest is random.
    cfg = load_config(
        None,
        ["model.init=random", "model.architecture=tiny", f"model.clip={path}", "data.path=x.jsonl"],
    )
    model = build_model(cfg.model, seed=0)
    for name, tensor in model.encoder.tower.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    fresh = build_model(
        load_config(
            None, ["model.init=random", "model.architecture=tiny", "data.path=x.jsonl"]
        ).model,
        seed=0,
    )
    assert not torch.equal(fresh.encoder.tower.conv1.weight, model.encoder.tower.conv1.weight)


def test_tower_training_changes_the_class_token_per_exemplar(scenes, tmp_path):
    """What the stage is for: after training, the class token differs more between objects."""
    from exemplar_core.encoder import build_tower

    config = tower_config("tiny")
    images, objects = read_objects(scenes)
    from train.tower import load_crops

    crops = load_crops(images, objects, pad=2)
    from exemplar_core.preprocess import normalize, resize_for_encoder

    pixels = torch.stack(
        [
            normalize(resize_for_encoder(c[None], config.image_size)[0], config.mean, config.std)
            for c in crops
        ]
    )
    torch.manual_seed(0)
    before = build_tower(config).eval()
    path = train_tower(
        scenes, tmp_path / "t", config, steps=60, batch_size=16, lr=3e-3, log_every=100
    )
    after = build_tower(config).eval()
    after.load_state_dict(read_clip_tower(path))
    with torch.no_grad():
        spread_before = before(pixels).std(0).mean()
        spread_after = after(pixels).std(0).mean()
    assert spread_after > 1.5 * spread_before


def test_bad_annotation_files_are_named(tmp_path, capsys):
    with pytest.raises(TowerDataError, match="does not exist"):
        read_objects(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "boxes": [[0, 0, 4, 4]]}\n')
    with pytest.raises(TowerDataError, match="bad.jsonl:1: expected .* objects"):
        read_objects(bad)
    bad.write_text('{"image": "a.png", "boxes": [[0, 0, 4, 4]], "objects": []}\n')
    with pytest.raises(TowerDataError, match="1 boxes but 0 objects"):
        read_objects(bad)
    bad.write_text('{"image": "a.png", "boxes": [[0, 0, 4, 4]], "objects": [{"color": "red"}]}\n')
    with pytest.raises(TowerDataError, match="lacks shape, texture"):
        read_objects(bad)
    with pytest.raises(SystemExit) as exc:
        tower_main(["--data", str(bad), "--out", str(tmp_path / "o"), "--config", "tiny"])
    assert exc.value.code == 2
    assert "lacks shape, texture" in capsys.readouterr().err


def test_tower_stage_never_overwrites(scenes, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "tower.safetensors").write_bytes(b"precious")
    with pytest.raises(SystemExit):
        tower_main(["--data", str(scenes), "--out", str(out), "--config", "tiny", "--steps", "1"])
    assert (out / "tower.safetensors").read_bytes() == b"precious"
    assert "exists" in capsys.readouterr().err
