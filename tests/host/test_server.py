"""End to end: a real ComfyUI server on 127.0.0.1 with this pack, every API workflow through the
headless runner on a tiny checkpoint in the project's own format, and bad input through the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pbe_host
import pytest
from PIL import Image

REPO = pbe_host.REPO_ROOT
SIZE = 64
OVERRIDES = {  # tiny and fast: 2 steps at 64 px
    "PaintByExample.InpaintSampler": {"steps": 2, "resolution": SIZE, "feather": 4},
    "KSampler": {"steps": 2},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    base = tmp_path_factory.mktemp("comfy_server")
    srv = pbe_host.start_server(base, models_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = {}
    source = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    Image.fromarray(source).save(folder / "source.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:40, 20:44] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / "exemplar.png")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(folder / "empty_mask.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(folder / "small_mask.png")
    Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(folder / "tiny.png")
    for name in ("source", "mask", "exemplar", "empty_mask", "small_mask", "tiny"):
        paths[name] = folder / f"{name}.png"
    return paths


def _options(workflow: Path, server, inputs, out: Path, **changes):
    from exemplar_core.headless import RunOptions

    prompt = json.loads(workflow.read_text())
    sets = []
    for node in prompt.values():
        for name, value in OVERRIDES.get(node["class_type"], {}).items():
            sets.append((f"{node['_meta']['title']}.{name}", value))
    options = RunOptions(
        workflow=workflow,
        server=server.url,
        images={"source": inputs["source"], "mask": inputs["mask"], "exemplar": inputs["exemplar"]},
        sets=sets,
        model=pbe_host.TINY_MODEL_NAME,
        seed=1,
        out=out,
        timeout=300,
        quiet=True,
    )
    for key, value in changes.items():
        setattr(options, key, value)
    return options


def test_object_info_matches_the_workflow_node_specs(server):
    build = pbe_host.workflows_build()
    for class_type, spec in build.NODE_SPECS.items():
        if spec.virtual:  # the frontend's own node (Note): the server does not know it
            continue
        info = server.get(f"/object_info/{class_type}")[class_type]
        order = info["input_order"]
        names = order.get("required", []) + order.get("optional", [])
        assert names == [name for name, _ in spec.inputs], class_type
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, kind in spec.inputs:
            actual = declared[name][0]
            actual = "COMBO" if isinstance(actual, list) else actual
            assert actual == kind, (class_type, name, actual)
        assert info["output"] == [kind for _, kind in spec.outputs], class_type


def test_templates_are_listed_for_the_pack(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates["paint-by-example"]) == sorted(
        p.stem for p in (REPO / "workflows").glob("*.json")
    )


def test_loader_lists_the_tiny_model_from_extra_model_paths(server):
    info = server.get("/object_info/PaintByExample.Loader")["PaintByExample.Loader"]
    assert pbe_host.TINY_MODEL_NAME in info["input"]["required"]["model_name"][1]["options"]


@pytest.mark.parametrize(
    "name", ["basic_exemplar_edit", "stock_ksampler_edit", "similarity_sweep", "bezier_mask_demo"]
)
def test_every_api_workflow_runs_and_saves_images(server, images, tmp_path, name):
    from exemplar_core.headless import run

    saved = run(_options(REPO / "workflows/api" / f"{name}.json", server, images, tmp_path))
    expected_count = {"similarity_sweep": 4, "bezier_mask_demo": 2}.get(name, 1)
    frames = []
    for path in saved:
        with Image.open(path) as image:
            frames.append(getattr(image, "n_frames", 1))
            assert image.size == (SIZE, SIZE)
    assert len(saved) == expected_count, saved
    source = np.asarray(Image.open(images["source"]).convert("RGB")).astype(int)
    if name in ("basic_exemplar_edit", "similarity_sweep"):
        for path in saved:  # far from the mask (outside the 4 px feather band) the source stays
            out = np.asarray(Image.open(path).convert("RGB")).astype(int)
            assert np.array_equal(out[:8], source[:8]) and np.array_equal(out[48:], source[48:])
            assert np.abs(out[20:36, 24:40] - source[20:36, 24:40]).mean() > 2


def test_bad_input_reports_a_clear_error_and_the_server_keeps_working(server, images, tmp_path):
    from exemplar_core.headless import HeadlessError, run

    basic = REPO / "workflows/api/basic_exemplar_edit.json"
    cases = [
        ({"mask": images["small_mask"]}, "mask is 32x32 but the image is 64x64"),
        ({"mask": images["empty_mask"]}, "is empty"),
        ({"exemplar": images["tiny"]}, "at least 16 px"),
    ]
    for swap, message in cases:
        chosen = {
            "source": images["source"],
            "mask": images["mask"],
            "exemplar": images["exemplar"],
            **swap,
        }
        with pytest.raises(HeadlessError, match=message):
            run(_options(basic, server, images, tmp_path, images=chosen))
    with pytest.raises(HeadlessError, match="paint_by_example"):
        run(_options(basic, server, images, tmp_path, model="missing.safetensors"))
    # the wrong kind of model connected: the Loader's VAE into the sampler's model input
    broken = json.loads(basic.read_text())
    broken["6"]["inputs"]["model"] = ["1", 1]
    wrong = tmp_path / "wrong_model.json"
    wrong.write_text(json.dumps(broken))
    with pytest.raises(HeadlessError, match="rejected"):
        run(_options(wrong, server, images, tmp_path))
    assert server.process.poll() is None
    saved = run(_options(basic, server, images, tmp_path / "after"))
    assert len(saved) == 1


def test_headless_cli_exits_non_zero_with_the_server_message(server, images, tmp_path):
    command = [
        sys.executable,
        "-m",
        "exemplar_core.headless",
        str(REPO / "workflows/api/basic_exemplar_edit.json"),
        "--server",
        server.url,
        "--source",
        str(images["source"]),
        "--mask",
        str(images["empty_mask"]),
        "--exemplar",
        str(images["exemplar"]),
        "--model",
        pbe_host.TINY_MODEL_NAME,
        "--set",
        "sampler.steps=1",
        "--set",
        f"sampler.resolution={SIZE}",
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "mask 0 is empty" in result.stderr


def test_quick_test_for_ci_reports_no_import_failure(tmp_path, models_dir):
    yaml = pbe_host.write_extra_paths(tmp_path, models_dir)
    command = pbe_host.comfyui_command(
        tmp_path / "comfy", yaml, pbe_host.free_port(), "--quick-test-for-ci"
    )
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    pack_lines = [line for line in log.splitlines() if "paint-by-example" in line]
    assert pack_lines, log[-3000:]
    assert not any("IMPORT FAILED" in line for line in pack_lines), pack_lines
