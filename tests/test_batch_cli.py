"""``python -m exemplar_core batch``: a manifest run with the embedded model (64 px, 2 steps),
its bad input, resuming, and a clean stop on a signal."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
from batch_support import FAST, MODEL, make_inputs, pixels, records, write_jsonl

from exemplar_core.batch.jobs import read_manifest
from exemplar_core.batch.run import BatchOptions, run_batch
from exemplar_core.cli import main
from exemplar_core.editor import Editor, EditResult


def _batch(manifest, out, *extra: str) -> list[str]:
    return ["batch", str(manifest), "--checkpoint", str(MODEL), "--out", str(out), *FAST, *extra]


def _stamps(out):
    return {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.glob("*.png")}


def test_a_manifest_run_records_each_failure_and_a_rerun_redoes_nothing(tmp_path, capsys):
    rows = make_inputs(tmp_path, 3)
    np.save(tmp_path / "x.npy", np.zeros(1))
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small.png")
    manifest = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            *rows,
            {**rows[0], "id": "missing", "source": "nope.png"},
            {**rows[0], "id": "small-mask", "mask": "small.png"},
            {**rows[0], "id": "not-image", "exemplar": "x.npy"},
            {**rows[0], "id": "bad-steps", "steps": 0},
            {**rows[1]},  # duplicate id j01
            {**rows[0], "id": "typo", "sead": 1},
        ],
        extra_lines=('{"id": "torn", "source"',),
    )
    out = tmp_path / "out"
    assert main(_batch(manifest, out)) == 1
    captured = capsys.readouterr()
    assert "3 done, 0 skipped, 4 failed, 3 manifest lines not run" in captured.out
    assert "line 8: duplicate id 'j01' (first on line 2)" in captured.err
    for row in rows:
        assert pixels(out / f"{row['id']}.png").shape == (48, 64, 3)  # the source's size
    last = {entry["id"]: entry for entry in records(out) if entry["stage"] != "manifest"}
    assert last["j00"]["output"] == "j00.png" and last["j00"]["error"] is None
    assert last["j00"]["seed"] == 10 and last["j00"]["settings"]["steps"] == 2
    assert last["j00"]["settings"]["size"] == 64 and last["j00"]["worker"] == 0
    assert "source file not found" in last["missing"]["error"]
    assert last["missing"]["stage"] == "load"
    assert "mask is 20x20 but the source is 64x48" in last["small-mask"]["error"]
    assert "not a readable image" in last["not-image"]["error"]
    assert "steps (manifest line 7) must be a whole number" in last["bad-steps"]["error"]
    assert not (out / "missing.png").exists()
    manifest_lines = sorted(e["line"] for e in records(out) if e["stage"] == "manifest")
    assert manifest_lines == [8, 9, 10]

    before = _stamps(out)
    assert main(_batch(manifest, out)) == 1  # the failures stand until retried
    assert (
        "0 done, 7 skipped (4 failed before: --retry-failed), 0 failed" in capsys.readouterr().out
    )
    assert _stamps(out) == before
    assert len([e for e in records(out) if e["stage"] == "manifest"]) == 3  # not repeated

    Image.open(tmp_path / "src0.png").save(tmp_path / "nope.png")
    assert main(_batch(manifest, out, "--retry-failed")) == 1
    assert "1 done, 3 skipped, 3 failed" in capsys.readouterr().out
    assert _stamps(out) == {**before, "missing.png": _stamps(out)["missing.png"]}
    assert len([e for e in records(out) if e["id"] == "j00"]) == 1


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    manifest = write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, 1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "j00.png").write_bytes(b"the user's file")
    assert main(_batch(manifest, out)) == 1
    (entry,) = records(out)
    assert "j00.png already exists in the --out folder" in entry["error"]
    assert "--overwrite" in entry["error"]
    assert (out / "j00.png").read_bytes() == b"the user's file"
    assert main(_batch(manifest, out, "--overwrite")) == 0
    assert pixels(out / "j00.png").shape == (48, 64, 3)


def test_a_folder_of_a_run_with_other_settings_is_refused(tmp_path, capsys):
    manifest = write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, 1))
    out = tmp_path / "out"
    assert main(_batch(manifest, out)) == 0
    before = _stamps(out)
    assert main(_batch(manifest, out, "--steps", "3", "--feather", "4")) == 2
    err = capsys.readouterr().err
    assert "holds the results of a run with other settings" in err
    assert "feather: 16 in the folder, 4 now; steps: 2 in the folder, 3 now" in err
    assert _stamps(out) == before


def test_a_csv_manifest_with_per_job_settings(tmp_path, capsys):
    make_inputs(tmp_path, 2)
    (tmp_path / "jobs.csv").write_text(
        "id,source,mask,exemplar,seed,steps,paste_back\n"
        "a,src0.png,mask.png,ex0.png,5,1,false\n"
        "b,src1.png,mask.png,ex1.png,,,\n"
    )
    out = tmp_path / "out"
    assert main(_batch(tmp_path / "jobs.csv", out, "--seed", "7")) == 0
    captured = capsys.readouterr()
    assert "batch: 2 done, 0 skipped, 0 failed in " in captured.out
    assert "edits/s" in captured.out
    assert "2/2" in captured.err and "edits/s" in captured.err  # the progress bar's last state
    last = {entry["id"]: entry for entry in records(out)}
    assert (last["a"]["seed"], last["a"]["settings"]["steps"]) == (5, 1)
    assert last["a"]["settings"]["paste_back"] is False
    assert (last["b"]["seed"], last["b"]["settings"]["steps"]) == (7, 2)


@pytest.mark.parametrize(("text", "message"), [(None, "manifest not found"), ("", "has no jobs")])
def test_a_missing_or_empty_manifest_exits_2(tmp_path, capsys, text, message):
    manifest = tmp_path / "jobs.jsonl"
    if text is not None:
        manifest.write_text(text)
    assert main(_batch(manifest, tmp_path / "out")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class _FakeEditor:
    """Returns the source as the edit; records how many requests each call had."""

    def __init__(self, on_call=None) -> None:
        self.calls: list[int] = []
        self.on_call = on_call

    def edit_batch(self, requests, max_batch=8):
        self.calls.append(len(requests))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        return [EditResult(r.source, r.source, None) for r in requests]


def test_jobs_are_loaded_and_edited_a_batch_at_a_time(tmp_path):
    jobs, _ = read_manifest(write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, 7)))
    editor = _FakeEditor()
    options = BatchOptions(tmp_path / "out", {"steps": 2}, batch_size=3, progress=False)
    summary = run_batch(editor, jobs, options)
    assert editor.calls == [3, 3, 1]
    assert (summary.done, summary.failed, summary.planned) == (7, 0, 7)


def test_sigterm_finishes_the_batch_in_hand_and_records_it(tmp_path, monkeypatch, capsys):
    """A stop keeps what is done: the batch being edited is written and recorded, the rest is
    left for the next run; the exit status says which signal stopped it."""
    manifest = write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, 3))
    out = tmp_path / "out"
    real = Editor.edit_batch

    def edit_then_signal(self, requests, max_batch=8):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the batch is being edited
        return real(self, requests, max_batch=max_batch)

    monkeypatch.setattr(Editor, "edit_batch", edit_then_signal)
    previous = signal.getsignal(signal.SIGTERM)
    assert main(_batch(manifest, out, "--batch-size", "2")) == 143
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back
    assert "stopped by SIGTERM with 1 left: run again to go on" in capsys.readouterr().out
    written = sorted(path.name for path in out.iterdir() if path.suffix == ".png")
    assert written == ["j00.png", "j01.png"]
    assert [entry["id"] for entry in records(out)] == ["j00", "j01"]
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(Editor, "edit_batch", real)
    assert main(_batch(manifest, out, "--batch-size", "2")) == 0
    assert "1 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert json.loads((out / "batch-run.json").read_text())["defaults"]["steps"] == 2


def test_exemplar_masks_and_cut_outs_are_read_as_edit_reads_them(tmp_path, capsys, caplog):
    """A job's exemplar mask and a cut-out's alpha take the one conversion ``edit`` uses: the
    mask and the alpha it equals give the same pixels, unlike the whole exemplar; a mask that
    marks the background is warned of."""
    from PIL import Image

    (row,) = make_inputs(tmp_path, 1)
    object_mask = np.zeros((32, 32), np.uint8)
    object_mask[6:26, 8:26] = 255
    Image.fromarray(object_mask).save(tmp_path / "object.png")
    Image.fromarray(255 - object_mask).save(tmp_path / "background.png")
    rgb = pixels(tmp_path / "ex0.png")
    Image.fromarray(np.dstack([rgb, object_mask])).save(tmp_path / "cutout.png")
    manifest = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {**row, "id": "masked", "exemplar_mask": "object.png"},
            {**row, "id": "cutout", "exemplar": "cutout.png"},
            {**row, "id": "whole"},
            {**row, "id": "inverted", "exemplar_mask": "background.png"},
        ],
    )
    out = tmp_path / "out"
    assert main(_batch(manifest, out)) == 0
    assert "4 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert (pixels(out / "masked.png") == pixels(out / "cutout.png")).all()
    assert (pixels(out / "masked.png") != pixels(out / "whole.png")).any()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "exemplar mask of job inverted covers the whole border" in text for text in warned
    ), warned


def _fake_run(jobs, out, defaults, overwrite=False):
    from exemplar_core.batch.results import RunFingerprint

    fingerprint = RunFingerprint({"name": "model"}, dict(defaults))
    options = BatchOptions(
        out, defaults, overwrite=overwrite, progress=False, fingerprint=fingerprint
    )
    return run_batch(_FakeEditor(), jobs, options)


def test_after_a_killed_overwrite_run_only_its_redone_jobs_count_as_done(tmp_path):
    """A run with new defaults and --overwrite, killed after redoing j00: a rerun without
    --overwrite takes j00 as done but does not pass j01, made with the old defaults, as done."""
    jobs, _ = read_manifest(write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, 2)))
    out = tmp_path / "out"
    assert _fake_run(jobs, out, {"steps": 2}).done == 2
    assert _fake_run(jobs[:1], out, {"steps": 3}, overwrite=True).done == 1  # killed after j00
    old = (out / "j01.png").read_bytes()
    summary = _fake_run(jobs, out, {"steps": 3})
    assert (summary.done, summary.skipped, summary.failed) == (0, 1, 1)
    last = {entry["id"]: entry for entry in records(out)}
    assert "j01.png already exists in the --out folder" in last["j01"]["error"]
    assert "--overwrite" in last["j01"]["error"]
    assert (out / "j01.png").read_bytes() == old  # kept, never replaced without --overwrite
    assert _fake_run(jobs, out, {"steps": 3}, overwrite=True).done == 2
    assert _fake_run(jobs, out, {"steps": 3}).skipped == 2


def test_a_job_whose_settings_or_files_changed_is_not_skipped_as_done(tmp_path):
    jobs, _ = read_manifest(write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, 3)))
    out = tmp_path / "out"
    assert _fake_run(jobs, out, {"steps": 2}).done == 3
    reseeded = dataclasses.replace(jobs[0], settings={"seed": 99})
    moved = dataclasses.replace(jobs[1], source=tmp_path / "src2.png")
    same = dataclasses.replace(jobs[2], settings={"seed": "12"})  # CSV's "12" is JSON's 12
    summary = _fake_run([reseeded, moved, same], out, {"steps": 2})
    assert (summary.done, summary.skipped, summary.failed) == (0, 1, 2)
    last = {entry["id"]: entry for entry in records(out)}
    assert last["j00"]["stage"] == last["j01"]["stage"] == "write"
    assert "already exists" in last["j00"]["error"] and "already exists" in last["j01"]["error"]
    assert last["j02"]["error"] is None


def test_compile_is_a_batch_option_and_falls_back_with_a_reason(tmp_path, capsys, caplog):
    """``--compile`` is edit's shared option; CUDA graphs on the CPU cannot be captured, so the
    run warns once and gives the uncompiled pixels."""
    manifest = write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, 1))
    assert main(_batch(manifest, tmp_path / "plain")) == 0
    with caplog.at_level("WARNING"):
        assert main(_batch(manifest, tmp_path / "graphs", "--compile", "cudagraphs")) == 0
    assert "cuda" in caplog.text.lower()
    assert np.array_equal(
        pixels(tmp_path / "plain" / "j00.png"), pixels(tmp_path / "graphs" / "j00.png")
    )
