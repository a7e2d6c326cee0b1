"""The subject experiment's pure parts: its scenes, cases and table (train.subject_eval)."""

from __future__ import annotations

import hashlib
import json

import pytest

from train import subject_eval, synthetic
from train.synthetic import Kind, ObjectSpec

SUBJECT = Kind("ring", "blue", "dots")


def _hash(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_training_scenes_box_only_the_subject_and_no_other_object_is_of_its_kind(tmp_path):
    summary = subject_eval.write_data(SUBJECT, tmp_path / "data", 5, 6, 64, 0)
    lines = (tmp_path / "data" / "subject.jsonl").read_text().splitlines()
    assert len(lines) == 5
    for i, line in enumerate(lines):
        entry = json.loads(line)
        _, objects = synthetic.make_kind_scene(SUBJECT, subject_eval.TRAIN_SPLIT, i, 0, 64)
        assert SUBJECT.of(objects[0])
        assert not any(SUBJECT.of(o) for o in objects[1:])
        assert entry["boxes"] == [list(objects[0].box)]
    exemplars = sorted((tmp_path / "data" / "class_exemplars").iterdir())
    assert len(exemplars) == 6
    assert str(SUBJECT) not in summary["class_exemplars"]


def test_write_data_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        subject_eval.write_data(SUBJECT, tmp_path, 3, 3, 64, 0)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_heldout_subject_cases_are_of_the_subject_on_scenes_unlike_training_and_scan():
    heldout = subject_eval.subject_cases(SUBJECT, 8, 0, 64, subject_eval.HELDOUT_SPLIT)
    scan = subject_eval.subject_cases(SUBJECT, 8, 0, 64, subject_eval.SCAN_SPLIT)
    train = {
        _hash(synthetic.make_kind_scene(SUBJECT, subject_eval.TRAIN_SPLIT, i, 0, 64)[0])
        for i in range(8)
    }
    held = {_hash(case["source"]) for case in heldout}
    assert len(held) == 8
    assert not held & train
    assert not held & {_hash(case["source"]) for case in scan}
    assert all(SUBJECT.of(ObjectSpec(**case["object"])) for case in heldout)


def test_other_cases_leave_out_the_subject_kind():
    first = synthetic.make_eval_case(0, 0, 64)["object"]
    kind = Kind(first["shape"], first["color"], first["texture"])
    cases = subject_eval.other_cases(kind, 4, 0, 64)
    assert len(cases) == 4
    assert not any(kind.of(ObjectSpec(**case["object"])) for case in cases)
    # the benchmark's own cases, in order, the subject's skipped
    assert cases[0]["object"] == synthetic.make_eval_case(1, 0, 64)["object"]


def test_kind_parse_names_what_is_expected():
    assert Kind.parse("star, pink ,dots") == Kind("star", "pink", "dots")
    with pytest.raises(ValueError, match="shape,colour,texture"):
        Kind.parse("star,pink")
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        Kind.parse("star,teal,dots")


def _report(label: str, subject_errors, other_errors, subject: str = "ring,blue,dots") -> dict:
    def part(errors):
        return {
            "cases": len(errors),
            "color_error": sum(errors) / len(errors),
            "color_error_se": subject_eval.standard_error(errors),
            "color_error_per_case": errors,
            "shape_iou": 0.5,
            "shape_iou_se": 0.0,
            "shape_iou_per_case": [0.5] * len(errors),
        }

    return {
        "label": label,
        "checkpoint": "x",
        "subject": subject,
        "similarity": 5.0,
        "steps": 20,
        "seed": 0,
        "subject_heldout": part(subject_errors),
        "other_objects": part(other_errors),
    }


def test_table_gives_each_change_paired_over_the_same_cases():
    base = _report("base", [0.5, 0.6, 0.4], [0.2, 0.3, 0.25])
    after = _report("lora", [0.3, 0.4, 0.2], [0.2, 0.3, 0.25])
    text = subject_eval.table([base, after])
    row = next(line for line in text.splitlines() if line.startswith("| lora"))
    assert "| 0.300 ± 0.058 | -0.200 ± 0.000 |" in row  # paired: every case fell by 0.2
    assert "| 0.250 ± 0.029 | +0.000 ± 0.000 |" in row


def test_table_refuses_reports_of_another_subject():
    with pytest.raises(ValueError, match="subject 'star,pink,dots'"):
        subject_eval.table(
            [
                _report("base", [0.5, 0.6], [0.2, 0.3]),
                _report("x", [0.5, 0.6], [0.2, 0.3], "star,pink,dots"),
            ]
        )
