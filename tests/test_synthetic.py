from __future__ import annotations

import json

import numpy as np

from train import synthetic


def test_scenes_are_deterministic_by_seed_and_differ_across_seeds():
    a, objs_a = synthetic.make_scene("train", 3, seed=0)
    b, objs_b = synthetic.make_scene("train", 3, seed=0)
    c, _ = synthetic.make_scene("train", 3, seed=1)
    assert a.tobytes() == b.tobytes() and objs_a == objs_b
    assert a.tobytes() != c.tobytes()


def test_boxes_are_tight_around_drawn_objects():
    image, objects = synthetic.make_scene("train", 0, seed=0, size=128)
    spec = objects[0]
    x0, y0, x1, y1 = spec.box
    assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
    canvas = np.asarray(image).astype(int)
    blank = np.asarray(
        synthetic._background(128, __import__("random").Random(synthetic.scene_seed("train", 0, 0)))
    ).astype(int)
    changed = np.abs(canvas - blank).sum(-1) > 30
    inside = changed[y0:y1, x0:x1].mean()
    assert inside > 0.3, "the object fills a good part of its box"


def test_written_splits_share_no_scene_and_use_the_trainer_jsonl_format(tmp_path):
    assert (
        synthetic.main(["--out", str(tmp_path), "--train", "12", "--test", "6", "--eval", "2"]) == 0
    )
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert len(train) == 12 and len(test) == 6
    assert all((tmp_path / r["image"]).is_file() and r["boxes"] for r in train + test)
    hashes = lambda rows: {(tmp_path / r["image"]).read_bytes() for r in rows}  # noqa: E731
    assert not hashes(train) & hashes(test)
    cases = json.loads((tmp_path / "eval.json").read_text())
    assert len(cases) == 2 and (tmp_path / "eval" / "0001_exemplar.png").is_file()


def test_refuses_to_write_into_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    try:
        synthetic.main(["--out", str(tmp_path), "--train", "1", "--test", "1"])
    except SystemExit as exc:
        assert exc.code == 2
    assert (tmp_path / "keep.txt").read_text() == "user data"
    assert "not empty" in capsys.readouterr().err
