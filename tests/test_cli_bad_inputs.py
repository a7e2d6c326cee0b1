"""Bad input to ``python -m exemplar_core edit|convert|info|demo|headless``: the user's path.

Every case runs ``python -m exemplar_core`` (its ``__main__`` module, argv and exit status) in a
separate Python process. To keep CI fast, the cases share one process that imports torch once
and runs the module afresh for each case with ``runpy``, as ``-m`` does; a few cases also run as
their own process. Each case must exit 2 with a message naming the problem and what is expected,
leave the user's files as they were, and (where it says so) fail before the model or the source
checkpoint is read: those cases give a checkpoint that would fail differently if it were read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import write_huge_header
from permissions import bound_by_permissions
from PIL import Image
from ports import closed_port

from exemplar_core import checkpoint
from exemplar_core.model import ModelConfigs, PaintByExampleModel

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows/api/basic_exemplar_edit.json"

# Runs each case as ``python -m exemplar_core ARGS`` would, in this one process.
DRIVER = """
import contextlib, io, json, runpy, sys, time
cases_file, results_file = sys.argv[1:3]
results = {}
for case_id, argv in json.load(open(cases_file)).items():
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["exemplar_core", *argv]
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module("exemplar_core", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException as exc:  # a traceback is a failure of the case, reported as such
            code, err = "crash", io.StringIO(f"{type(exc).__name__}: {exc}")
    results[case_id] = {"rc": code, "out": out.getvalue(), "err": err.getvalue(),
                        "seconds": time.perf_counter() - start}
json.dump(results, open(results_file, "w"))
"""


@dataclass(frozen=True)
class Case:
    """argv with {t} for the case folder; rc; substrings the message must hold (lower case)."""

    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]
    rc: int = 2
    unchanged: tuple[str, ...] = ()  # files of the folder that must keep their bytes
    max_seconds: float | None = None  # rules out a hang; generous for a loaded machine
    absent: tuple[str, ...] = field(default=())  # files that must not exist afterwards


def _edit(*extra: str, **paths: str) -> tuple[str, ...]:
    """edit argv; keyword arguments replace the checkpoint, source, mask, exemplar or out."""
    files = {
        "checkpoint": "{t}/tiny.safetensors",
        "source": "{t}/src.png",
        "mask": "{t}/mask.png",
        "exemplar": "{t}/ex.png",
        "out": "{t}/out.png",
        **paths,
    }
    argv = ["edit"]
    for name, value in files.items():
        argv += [f"--{name}", value]
    return (*argv, "--steps", "2", "--scheduler", "ddim", *extra)


GARBAGE_CKPT = "{t}/text.safetensors"  # reading it would fail with "not a readable .safetensors"

CASES = [
    # ---- edit
    Case(
        "edit-missing-checkpoint",
        _edit(checkpoint="{t}/nope.safetensors"),
        ("nope.safetensors does not exist",),
    ),
    Case(
        "edit-missing-source", _edit(source="{t}/nope.png"), ("source file not found", "nope.png")
    ),
    Case(
        "edit-source-is-a-folder",
        _edit(source="{t}/folder"),
        ("source", "is a folder", "give an image file"),
    ),
    Case(
        "edit-text-file-as-safetensors",
        _edit(checkpoint="{t}/text.safetensors"),
        ("not a readable .safetensors", "header"),
    ),
    Case("edit-truncated-safetensors", _edit(checkpoint="{t}/cut.safetensors"), ("truncated",)),
    Case(
        "edit-non-image-source",
        _edit(source="{t}/notimage.png"),
        ("not a readable image", "expected a png"),
    ),
    Case(
        "edit-mask-size-mismatch",
        _edit(mask="{t}/small_mask.png", checkpoint=GARBAGE_CKPT),
        ("mask is 50x36 but the source is 100x72", "--resize-mask"),
    ),
    Case("edit-zero-steps", _edit("--steps", "0"), ("--steps", "between 1 and 1000, got 0")),
    Case("edit-negative-steps", _edit("--steps", "-3"), ("--steps", "between 1 and 1000")),
    Case(
        "edit-unknown-scheduler",
        _edit("--scheduler", "lms"),
        ("--scheduler", "invalid choice", "ddim"),
    ),
    Case(
        "edit-exemplar-expand-below-1",
        _edit("--exemplar-expand", "0.5", checkpoint=GARBAGE_CKPT),
        ("--exemplar-expand", "between 1 and 4, got 0.5"),
    ),
    Case(
        "edit-exemplar-expand-nan",
        _edit("--exemplar-expand", "nan", checkpoint=GARBAGE_CKPT),
        ("--exemplar-expand", "finite number", "got nan"),
    ),
    Case(
        "edit-unknown-exemplar-resize",
        _edit("--exemplar-resize", "pad"),
        ("--exemplar-resize", "invalid choice", "pad_to_square"),
    ),
    Case(
        "edit-cutout-exemplar-uses-its-alpha",
        _edit(
            "--exemplar-resize",
            "pad_to_square",
            "--exemplar-expand",
            "1.2",
            exemplar="{t}/cut.png",
            out="{t}/cut_out.png",
        ),
        ("--exemplar has transparency: its alpha is the exemplar mask",),
        rc=0,
    ),
    Case(
        "edit-out-in-read-only-folder",
        _edit(out="{t}/readonly/out.png", checkpoint=GARBAGE_CKPT),
        ("readonly", "not writable"),
        absent=("readonly/out.png",),
    ),
    Case(
        "edit-out-under-a-file",
        _edit(out="{t}/blocker/out.png", checkpoint=GARBAGE_CKPT),
        ("blocker is a file",),
        unchanged=("blocker",),
    ),
    Case(
        "edit-out-is-an-input",
        _edit("--overwrite", out="{t}/src.png", checkpoint=GARBAGE_CKPT),
        ("is one of the inputs",),
        unchanged=("src.png",),
    ),
    Case(
        "edit-out-exists",
        _edit(out="{t}/keep.png", checkpoint=GARBAGE_CKPT),
        ("already exists", "--overwrite"),
        unchanged=("keep.png",),
    ),
    Case(
        "edit-out-is-a-folder",
        _edit(out="{t}/folder", checkpoint=GARBAGE_CKPT),
        ("is a folder", "file name"),
    ),
    Case(
        "edit-out-unknown-format",
        _edit(out="{t}/out.tiff", checkpoint=GARBAGE_CKPT),
        (".png", ".webp", "'.tiff'"),
    ),
    # ---- convert
    Case(
        "convert-missing-source",
        ("convert", "{t}/nope.ckpt", "{t}/c1.safetensors"),
        ("nope.ckpt does not exist",),
        absent=("c1.safetensors",),
    ),
    Case(
        "convert-source-folder-not-diffusers",
        ("convert", "{t}/folder", "{t}/c2.safetensors"),
        ("without model_index.json", "expected a diffusers"),
    ),
    Case(
        "convert-text-file-as-safetensors",
        ("convert", "{t}/text.safetensors", "{t}/c3.safetensors"),
        ("not a readable .safetensors",),
        absent=("c3.safetensors",),
    ),
    Case(
        "convert-truncated-safetensors",
        ("convert", "{t}/cut.safetensors", "{t}/c4.safetensors"),
        ("truncated",),
        absent=("c4.safetensors",),
    ),
    Case(
        "convert-dst-exists",
        ("convert", GARBAGE_CKPT, "{t}/keep.safetensors"),
        ("already exists", "--overwrite"),
        unchanged=("keep.safetensors",),
    ),
    Case("convert-dst-is-a-folder", ("convert", GARBAGE_CKPT, "{t}/folder"), ("is a folder",)),
    Case(
        "convert-dst-is-the-source",
        ("convert", "{t}/tiny.safetensors", "{t}/tiny.safetensors", "--overwrite"),
        ("is one of the inputs",),
        unchanged=("tiny.safetensors",),
    ),
    Case(
        "convert-dst-not-safetensors",
        ("convert", GARBAGE_CKPT, "{t}/c5.ckpt"),
        ("must end in .safetensors",),
    ),
    Case(
        "convert-dst-in-read-only-folder",
        ("convert", GARBAGE_CKPT, "{t}/readonly/sub/c6.safetensors"),
        ("readonly", "not writable"),
    ),
    Case(
        "convert-dst-under-a-file",
        ("convert", GARBAGE_CKPT, "{t}/blocker/c7.safetensors"),
        ("blocker is a file",),
        unchanged=("blocker",),
    ),
    Case(
        "convert-readme-path-folder-is-created",
        ("convert", "{t}/tiny.ckpt", "{t}/models/paint_by_example/pbe.safetensors"),
        ("wrote",),
        rc=0,
    ),
    # ---- info
    Case("info-missing-file", ("info", "{t}/nope.safetensors"), ("does not exist",)),
    Case("info-folder", ("info", "{t}/folder"), ("without model_index.json",)),
    Case(
        "info-text-file-as-safetensors",
        ("info", "{t}/text.safetensors"),
        ("not a readable .safetensors",),
    ),
    Case("info-truncated-safetensors", ("info", "{t}/cut.safetensors"), ("truncated",)),
    Case(
        "info-header-claims-gigabytes",
        ("info", "{t}/huge_header.safetensors"),
        ("8,000,000,000-byte header",),
        max_seconds=60,
    ),
    # ---- demo
    Case(
        "demo-missing-source",
        ("demo", "--source", "{t}/nope.png", "--out", "{t}/d1"),
        ("source file not found",),
        absent=("d1",),
    ),
    Case(
        "demo-non-image-exemplar",
        ("demo", "--exemplar", "{t}/notimage.png", "--out", "{t}/d2"),
        ("exemplar", "not a readable image"),
    ),
    Case(
        "demo-mask-size-mismatch",
        ("demo", "--mask", "{t}/small_mask.png", "--out", "{t}/d3", "--checkpoint", GARBAGE_CKPT),
        ("mask is 50x36",),
    ),
    Case("demo-zero-steps", ("demo", "--steps", "0"), ("--steps", "between 1 and 1000")),
    Case("demo-bad-scales", ("demo", "--scales", "1,x"), ("--scales", "comma-separated")),
    Case(
        "demo-out-is-a-file",
        ("demo", "--out", "{t}/blocker", "--checkpoint", GARBAGE_CKPT),
        ("blocker is an existing file", "names a folder"),
        unchanged=("blocker",),
    ),
    Case(
        "demo-out-in-a-read-only-folder",
        ("demo", "--out", "{t}/readonly/d5", "--checkpoint", GARBAGE_CKPT),
        ("cannot write into the --out folder", "readonly is not writable"),
        absent=("readonly/d5",),
    ),
    Case(
        "demo-missing-checkpoint",
        ("demo", "--checkpoint", "{t}/nope.safetensors"),
        ("nope.safetensors not found", "--checkpoint"),
    ),
    # ---- headless
    Case(
        "headless-unreachable-server",
        ("headless", str(WORKFLOW), "--server", "{closed}", "--out", "{t}/h1", "--quiet"),
        ("cannot reach comfyui", "--server"),
        max_seconds=60,
    ),
    Case(
        "headless-zero-timeout",
        ("headless", str(WORKFLOW), "--timeout", "0"),
        ("--timeout", "above 0"),
    ),
    Case(
        "headless-negative-timeout",
        ("headless", str(WORKFLOW), "--timeout", "-5"),
        ("--timeout", "above 0"),
    ),
    Case(
        "headless-nan-timeout",
        ("headless", str(WORKFLOW), "--timeout", "nan"),
        ("--timeout", "above 0"),
    ),
    Case(
        "headless-text-timeout",
        ("headless", str(WORKFLOW), "--timeout", "soon"),
        ("--timeout", "number of seconds"),
    ),
    Case(
        "headless-zero-steps",
        ("headless", str(WORKFLOW), "--steps", "0"),
        ("--steps", "at least 1"),
    ),
    Case(
        "headless-bad-server",
        ("headless", str(WORKFLOW), "--server", "ftp://x"),
        ("--server", "http://127.0.0.1:8188"),
    ),
    Case(
        "headless-missing-workflow",
        ("headless", "{t}/nope.json"),
        ("cannot read workflow", "expected an api-format workflow"),
    ),
    Case(
        "headless-missing-source",
        (
            "headless",
            str(WORKFLOW),
            "--source",
            "{t}/nope.png",
            "--out",
            "{t}/h2",
            "--server",
            "{closed}",
        ),
        ("cannot read", "nope.png", "expected an image file"),
    ),
    Case(
        "headless-out-is-a-file",
        ("headless", str(WORKFLOW), "--out", "{t}/blocker", "--server", "{closed}"),
        ("existing file", "folder"),
        unchanged=("blocker",),
    ),
    Case(
        "headless-out-in-a-read-only-folder",
        ("headless", str(WORKFLOW), "--out", "{t}/readonly/h3", "--server", "{closed}"),
        ("cannot write into the --out folder", "readonly is not writable"),
        absent=("readonly/h3",),
    ),
    # ---- what --no-paste-back writes is said, with its size
    Case(
        "edit-no-paste-back-says-what-it-wrote",
        _edit("--no-paste-back", out="{t}/window.png"),
        ("(64x48)", "processing size 64x48", "window 92x72", "not pasted into the source"),
        rc=0,
    ),
]


def _write_case_files(t: Path) -> None:
    torch.manual_seed(0)
    configs = ModelConfigs.tiny()
    # The official layout cannot store heads: use the ones its reader assumes.
    official = ModelConfigs({**configs.unet, "attention_head_dim": 8}, configs.vae, configs.encoder)
    ckpt = checkpoint.checkpoint_from_model(PaintByExampleModel(official))
    torch.save({"state_dict": checkpoint.official_state_dict(ckpt)}, t / "tiny.ckpt")
    checkpoint.save_single_file(ckpt, t / "tiny.safetensors")
    data = (t / "tiny.safetensors").read_bytes()
    (t / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (t / "text.safetensors").write_text("this is a text file, not a model\n" * 20)
    # 8 bytes that claim an 8 GB header, then a few bytes: must be refused without allocating.
    write_huge_header(t / "huge_header.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (72, 100, 3), dtype=np.uint8)).save(t / "src.png")
    mask = np.zeros((72, 100), np.uint8)
    mask[20:50, 30:70] = 255
    Image.fromarray(mask).save(t / "mask.png")
    Image.fromarray(np.full((36, 50), 255, np.uint8)).save(t / "small_mask.png")
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(t / "ex.png")
    shutil.copy(ROOT / "example_inputs" / "exemplar_cutout.png", t / "cut.png")
    (t / "notimage.png").write_text("not an image")
    (t / "keep.png").write_bytes(b"the user's own picture")
    (t / "keep.safetensors").write_bytes(b"the user's own model")
    (t / "blocker").write_bytes(b"a file where a folder would be")
    (t / "folder").mkdir()
    (t / "readonly").mkdir()
    (t / "readonly").chmod(0o555)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    t = tmp_path_factory.mktemp("bad_inputs")
    _write_case_files(t)
    snapshot = {p.name: p.read_bytes() for p in t.iterdir() if p.is_file()}
    with closed_port() as port:  # held while the cases run: nothing else can listen there
        closed = f"http://127.0.0.1:{port}"
        argv = {
            case.id: [a.replace("{t}", str(t)).replace("{closed}", closed) for a in case.argv]
            for case in CASES
        }
        (t.parent / "argv.json").write_text(json.dumps(argv))
        subprocess.run(
            [sys.executable, "-c", DRIVER, str(t.parent / "argv.json"), str(t.parent / "out.json")],
            cwd=t,  # demo's default --out (out/demo) would land here, never in the repository
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
            check=True,
            timeout=600,
            preexec_fn=bound_by_permissions(),  # the read-only folder is read-only for root too
        )
    (t / "readonly").chmod(0o755)
    return t, {"snapshot": snapshot, **json.loads((t.parent / "out.json").read_text())}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_the_reason_and_changes_nothing(results, case):
    t, runs = results
    run = runs[case.id]
    message = (run["err"] + run["out"]).lower()
    assert run["rc"] == case.rc, f"{case.id}: exit {run['rc']}, output: {message}"
    for expected in case.expect:
        assert expected.lower() in message, f"{case.id}: {expected!r} not in {message!r}"
    if case.rc == 2:
        assert "traceback" not in message
    for name in case.unchanged:
        assert (t / name).read_bytes() == runs["snapshot"][name], f"{name} was changed"
    for name in case.absent:
        assert not (t / name).exists(), f"{name} was written"
    if case.max_seconds is not None:
        assert run["seconds"] < case.max_seconds, f"{case.id} took {run['seconds']:.1f} s"


def test_convert_creates_the_readme_folder_and_writes_a_readable_model(results):
    t, _ = results
    written = t / "models/paint_by_example/pbe.safetensors"
    assert checkpoint.detect_format(written) == "single-file"
    assert checkpoint.load_checkpoint(written).configs.unet["in_channels"] == 9


def test_no_paste_back_writes_the_processing_size_window(results):
    t, _ = results
    # The mask's 40x30 box plus context is a 92x72 window of the 100x72 source, processed (and
    # written) at the tiny model's 64 px scale: 64x48, not the source's size.
    assert Image.open(t / "window.png").size == (64, 48)


def test_headless_as_its_own_process_reports_an_unreachable_server_fast(tmp_path):
    start = time.perf_counter()
    with closed_port() as port:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "exemplar_core.headless",
                str(WORKFLOW),
                "--quiet",
                "--server",
                f"http://127.0.0.1:{port}",
                "--out",
                str(tmp_path / "out"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert "cannot reach ComfyUI" in result.stderr and "--server" in result.stderr
    assert time.perf_counter() - start < 60
    assert "Traceback" not in result.stderr


def test_edit_as_its_own_process_refuses_an_existing_out_before_loading(tmp_path):
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"mine")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exemplar_core",
            "edit",
            "--checkpoint",
            str(tmp_path / "x"),
            "--source",
            "s.png",
            "--mask",
            "m.png",
            "--exemplar",
            "e.png",
            "--out",
            str(keep),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert keep.read_bytes() == b"mine"
