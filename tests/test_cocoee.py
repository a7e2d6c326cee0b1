"""COCOEE end to end: the official test-bench layout read as batch jobs, its results laid out so
``python -m train.eval folder --results OUT`` finds every id. The fixture is the official layout in
miniature (three folders, ``id_list.npy``, 12-digit ids) with one broken id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exemplar_core.batch import cocoee

IDS = [139, 285, 632]  # COCO ids; files are named by the 12-digit zero-padded id
BROKEN = 724  # listed in id_list.npy, has its source and exemplar, but no mask
SIZE = 64  # the embedded model's native size, so the result and the mask share one box


def _key(coco_id: int) -> str:
    return str(coco_id).zfill(12)


def make_bench(root: Path, ids=IDS, broken=BROKEN) -> Path:
    """A COCOEE test bench in the official layout: GT_3500, Ref_3500, Mask_bbox_3500."""
    rng = np.random.default_rng(0)
    for sub in ("GT_3500", "Ref_3500", "Mask_bbox_3500"):
        (root / sub).mkdir(parents=True)
    for coco_id in [*ids, broken]:
        key = _key(coco_id)
        source = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(source).save(root / "GT_3500" / f"{key}_GT.png")
        Image.fromarray(np.full((24, 20, 3), (200, 40, 40), np.uint8)).save(
            root / "Ref_3500" / f"{key}_ref.png"
        )
        if coco_id != broken:
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[16:48, 20:44] = 255  # white = the box to repaint, as the official masks
            Image.fromarray(mask).save(root / "Mask_bbox_3500" / f"{key}_mask.png")
    np.save(root / "id_list.npy", np.array([*ids, broken], dtype=np.int64))
    return root


def test_jobs_pair_each_ids_files_by_the_official_names(tmp_path):
    bench = make_bench(tmp_path / "test_bench")
    jobs = cocoee.cocoee_jobs(bench)
    assert [j.id for j in jobs] == [_key(i) for i in [*IDS, BROKEN]]  # the id list's order
    first = jobs[0]
    assert first.source == bench / "GT_3500" / "000000000139_GT.png"
    assert first.exemplar == bench / "Ref_3500" / "000000000139_ref.png"
    assert first.mask == bench / "Mask_bbox_3500" / "000000000139_mask.png"
    assert first.exemplar_mask is None and first.settings == {}
    # the broken id keeps its job (it fails on the missing mask and is recorded) and is listed
    problems = cocoee.scan(bench).problems()
    assert problems == [f"COCOEE id {_key(BROKEN)}: missing {jobs[-1].mask}"]


def test_without_the_id_list_the_ids_come_from_the_file_names(tmp_path):
    bench = make_bench(tmp_path / "tb")
    (bench / "id_list.npy").unlink()
    (bench / "Ref_3500" / "000000000999_ref.png").write_bytes(b"")  # an exemplar with no source
    scan = cocoee.scan(bench)
    assert scan.ids == sorted(_key(i) for i in [*IDS, BROKEN, 999])
    assert set(scan.missing) == {_key(BROKEN), _key(999)}
    assert [p.name for p in scan.missing[_key(999)]] == [
        "000000000999_GT.png",
        "000000000999_mask.png",
    ]


def test_a_folder_that_is_not_the_test_bench_names_what_was_expected(tmp_path):
    bench = make_bench(tmp_path / "unpacked" / "test_bench")
    with pytest.raises(cocoee.CocoeeLayoutError) as err:
        cocoee.cocoee_jobs(tmp_path / "unpacked")
    message = str(err.value)
    assert "expected the folders GT_3500, Ref_3500 and Mask_bbox_3500" in message
    assert "found test_bench" in message and "give that folder" in message
    (bench / "Ref_3500").rename(bench / "refs")
    with pytest.raises(cocoee.CocoeeLayoutError, match="missing Ref_3500; found .*refs"):
        cocoee.cocoee_jobs(bench)
    with pytest.raises(cocoee.CocoeeLayoutError, match="is not a folder"):
        cocoee.cocoee_jobs(tmp_path / "nowhere")
    np.save(tmp_path / "unpacked" / "test_bench" / "id_list.npy", np.zeros((2, 2)))
    (bench / "refs").rename(bench / "Ref_3500")
    with pytest.raises(cocoee.CocoeeLayoutError, match="1-D array of integer COCO ids"):
        cocoee.scan(bench)


def test_eval_layout_links_every_complete_id_and_never_replaces_a_different_file(tmp_path):
    bench = make_bench(tmp_path / "tb")
    out = tmp_path / "out"
    assert cocoee.write_eval_layout(bench, out) == 2 * len(IDS)
    for coco_id in IDS:
        key = _key(coco_id)
        linked = out / "exemplars" / f"{key}_ref.png"
        assert linked.read_bytes() == (bench / "Ref_3500" / f"{key}_ref.png").read_bytes()
        assert (out / "masks" / f"{key}_mask.png").is_file()
    assert not (out / "exemplars" / f"{_key(BROKEN)}_ref.png").exists()
    assert cocoee.write_eval_layout(bench, out) == 0  # a second run (a resumed batch) is a no-op
    mine = out / "masks" / f"{_key(IDS[0])}_mask.png"
    mine.unlink()
    mine.write_bytes(b"a user's file")
    with pytest.raises(cocoee.CocoeeLayoutError, match="exists and differs"):
        cocoee.write_eval_layout(bench, out)
    assert mine.read_bytes() == b"a user's file"


def test_eval_layout_copies_where_a_hard_link_is_refused(tmp_path, monkeypatch):
    import errno
    import os

    def refuse(src, dst):  # another file system
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    bench = make_bench(tmp_path / "tb")
    monkeypatch.setattr(os, "link", refuse)
    assert cocoee.write_eval_layout(bench, tmp_path / "out") == 2 * len(IDS)
    copied = tmp_path / "out" / "exemplars" / f"{_key(IDS[0])}_ref.png"
    original = bench / "Ref_3500" / f"{_key(IDS[0])}_ref.png"
    assert copied.read_bytes() == original.read_bytes()
    assert not os.path.samefile(copied, original)
    assert cocoee.write_eval_layout(bench, tmp_path / "out") == 0


def _tiny_open_clip(tmp_path: Path) -> tuple[str, Path]:
    """A registered tiny open_clip config and its random weights file (nothing downloaded)."""
    import open_clip
    import torch

    name = "pbe-test-tiny-clip"
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    weights = tmp_path / "tiny_clip.pt"
    torch.save(open_clip.create_model(name).state_dict(), weights)
    return name, weights


def test_train_eval_folder_scores_the_batch_out_folder_by_its_defaults(
    tmp_path, capsys, monkeypatch
):
    import torch
    import torchvision

    from train import eval as train_eval

    bench = make_bench(tmp_path / "tb")
    out = tmp_path / "out"
    out.mkdir()
    for coco_id in [*IDS, BROKEN]:  # stand-in results, named as the batch names its outputs
        key = _key(coco_id)
        Image.open(bench / "GT_3500" / f"{key}_GT.png").save(out / f"{key}.png")
    cocoee.write_eval_layout(bench, out)
    name, weights = _tiny_open_clip(tmp_path)
    reference = tmp_path / "reference"  # FID's real images, read lazily
    reference.mkdir()
    for coco_id in IDS:
        (reference / f"{_key(coco_id)}.png").write_bytes(
            (out / f"{_key(coco_id)}.png").read_bytes()
        )
    (reference / ".DS_Store").write_bytes(b"not an image")  # hidden files are not images
    inception = tmp_path / "inception.pt"  # random weights: only the pairing is checked here
    torch.save(
        torchvision.models.inception_v3(
            weights=None, aux_logits=True, init_weights=False
        ).state_dict(),
        inception,
    )
    seen = {}

    def fid(extract, generated, real):  # counts what reaches the metric, batch by batch
        seen["generated"] = sum(len(b) for b in generated)
        seen["real"] = [tuple(b.shape) for b in real]
        return 1.5

    monkeypatch.setattr(train_eval.metrics, "fid", fid)
    args = ["folder", "--results", str(out), "--clip-model", name, "--clip-weights", str(weights)]
    args += ["--fid-weights", str(inception), "--reference", str(reference)]
    assert train_eval.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == len(IDS)  # every complete id; the broken one has no mask
    assert -100.0 <= report["clip_score"] <= 100.0
    assert report["fid"] == 1.5
    assert seen == {"generated": len(IDS), "real": [(len(IDS), 3, 299, 299)]}


def test_official_settings_fill_only_the_options_left_at_their_defaults():
    from exemplar_core.editor import EditSettings

    editor = EditSettings()
    given = {
        "steps": 2,
        "seed": editor.seed,
        "whole_image": False,
        "paste_back": True,
        "feather": 3,
    }
    settings = cocoee.cocoee_defaults(given)
    assert settings == {
        "steps": 2,  # given on the command line: kept
        "seed": 42,  # the official script's seed_everything(42)
        "whole_image": True,
        "paste_back": False,
        "feather": 3,
        "similarity": 5.0,
        "scheduler": "pndm",  # PLMS
    }


def test_batch_cocoee_edits_every_complete_id_and_records_the_broken_one(tmp_path, capsys):
    from exemplar_core.batch.results import load_results
    from exemplar_core.cli import main as cli_main
    from exemplar_core.demo import DEFAULT_MODEL
    from train import eval as train_eval

    bench = make_bench(tmp_path / "test_bench")
    out = tmp_path / "out"
    argv = ["batch", "--cocoee", str(bench), "--checkpoint", str(DEFAULT_MODEL), "--out", str(out)]
    argv += ["--steps", "2", "--no-progress", "--device", "cpu", "--batch-size", "4"]
    assert cli_main(argv) == 1  # one job failed, the others ran
    assert sorted(p.name for p in out.glob("*.png")) == [f"{_key(i)}.png" for i in IDS]
    for coco_id in IDS:
        assert Image.open(out / f"{_key(coco_id)}.png").size == (SIZE, SIZE)
    records = load_results(out)
    broken = records[_key(BROKEN)]
    assert broken["output"] is None and f"{_key(BROKEN)}_mask.png" in broken["error"]
    for coco_id in IDS:
        done = records[_key(coco_id)]
        assert done["error"] is None and done["output"] == f"{_key(coco_id)}.png"
        settings = done["settings"]
        assert (settings["steps"], settings["seed"]) == (2, 42)  # given, official
        assert settings["whole_image"] and not settings["paste_back"]
    capsys.readouterr()
    # the second documented command, at its defaults, pairs every edited id
    assert train_eval.main(["folder", "--results", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"images": len(IDS)}
