"""The user's path, over HTTP: ComfyUI started as a user's install runs it, on both of ComfyUI's
ways of loading a V3 pack (0.3.64 calls only ``get_node_list``; later versions call ``on_load``
first), then the template browser's requests, the templates' images and every API twin as it is.

No in-process shortcut: the pack is a copy under ``custom_nodes/``, the input folder starts
empty, and nothing is uploaded by the test (the pack must put the templates' inputs in place).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pbe_host
import pytest
from PIL import Image

REPO = pbe_host.REPO_ROOT
PACK = pbe_host.PACK_FOLDER
TEMPLATES = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
LOADERS = ["0.3.64 loader", "newer loader"]


# The newer loader runs the templates on the shipped model: one that needs the full-size ViT-L
# pair (the CLIP Vision + Exemplar Mapper template) runs the same nodes, already registered the
# same way, and costs a full-size load per install; it runs on the 0.3.64 loader only.
UNSHIPPED = {w.name for w in pbe_host.workflows_build().WORKFLOWS if w.needs_unshipped_models}
TWIN_RUNS = [
    pytest.param(loader, name, id=f"{loader}-{name}")
    for loader in LOADERS
    for name in TEMPLATES
    if loader == LOADERS[0] or name not in UNSHIPPED
]


def _server(request, loader: str) -> pbe_host.Server:
    name = "user_install" if loader == LOADERS[0] else "user_install_newer_loader"
    return request.getfixturevalue(name)


@pytest.fixture(params=LOADERS)
def installed(request) -> pbe_host.Server:
    return _server(request, request.param)


def test_both_loading_orders_are_what_they_claim(user_install, user_install_newer_loader):
    marker = "newer_loader: on_load"
    assert marker not in user_install.log()
    assert marker in user_install_newer_loader.log()
    for server in (user_install, user_install_newer_loader):
        ours = [line for line in server.log().splitlines() if f"custom_nodes/{PACK}" in line]
        assert ours and not any("IMPORT FAILED" in line for line in ours), server.log()[-3000:]


def test_start_up_puts_the_templates_inputs_in_the_empty_input_folder(installed):
    for source in sorted((REPO / "example_inputs").glob("*.png")):
        copied = installed.input_directory / f"pbe_example_{source.name}"
        assert copied.read_bytes() == source.read_bytes()


def test_template_list_names_every_template_of_the_pack(installed):
    assert sorted(installed.get("/workflow_templates")[PACK]) == TEMPLATES


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_and_its_thumbnail_is_served(installed, name):
    status, kind, body = installed.get_bytes(f"/api/workflow_templates/{PACK}/{name}.json")
    assert status == 200, f"{name}.json answered {status}"
    assert json.loads(body) == json.loads((REPO / "workflows" / f"{name}.json").read_text())
    status, kind, body = installed.get_bytes(f"/api/workflow_templates/{PACK}/{name}.jpg")
    assert (status, kind) == (200, "image/jpeg"), f"{name}.jpg answered {status}"
    assert body == (REPO / "workflows" / f"{name}.jpg").read_bytes()


def test_every_image_a_template_loads_is_offered_by_the_image_loaders(installed):
    offered = {}
    for loader in ("LoadImage", "LoadImageMask"):
        info = installed.get(f"/object_info/{loader}")[loader]
        offered[loader] = set(info["input"]["required"]["image"][0])
    for name in TEMPLATES:
        ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
        for node in ui["nodes"]:
            if node["type"] in offered:
                image = node["widgets_values"][0]
                assert image in offered[node["type"]], (name, node["title"], image)


@pytest.mark.parametrize(("loader", "name"), TWIN_RUNS)
def test_every_api_twin_runs_as_it_is_and_matches_its_thumbnail(loader, name, tmp_path, request):
    from exemplar_core.headless import RunOptions, run_outputs

    installed = _server(request, loader)
    build = pbe_host.workflows_build()
    workflow = next(w for w in build.WORKFLOWS if w.name == name)
    if workflow.needs_unshipped_models:
        pbe_host.add_model_files(installed, request.getfixturevalue("vit_l_pair"))
    options = RunOptions(
        workflow=REPO / "workflows/api" / f"{name}.json",
        server=installed.url,
        out=tmp_path,
        timeout=600,
        quiet=True,
    )
    saved: dict[str, list[Path]] = {}
    for item in run_outputs(options):  # raises with the server's message unless it succeeded
        saved.setdefault(item.title, []).append(item.path)
    wanted = {"save"} | {tile.save for tile in workflow.thumbnail if tile.save}
    assert wanted <= set(saved), (name, sorted(saved))
    fresh = build.compose_thumbnail(workflow, saved)
    with Image.open(build.thumbnail_path(workflow)) as committed:
        shipped = committed.convert("RGB")
    for index, tile in enumerate(workflow.thumbnail):
        if tile.save is None:
            continue
        cell = build.tile_cell(index)
        # Means over 8x8 blocks: JPEG's noise averages out (the largest block difference of a
        # template against its own thumbnail was 3.6 levels), an edit's does not (52 to 162
        # against the other templates' thumbnails).
        difference = np.abs(_blocks(fresh.crop(cell)) - _blocks(shipped.crop(cell))).max()
        assert difference < 12, f"{name}.jpg's {tile.label!r} is not this template's result"


def _blocks(image: Image.Image, size: int = 8) -> np.ndarray:
    pixels = np.asarray(image, dtype=float)
    height, width = pixels.shape[0] // size * size, pixels.shape[1] // size * size
    blocks = pixels[:height, :width].reshape(height // size, size, width // size, size, 3)
    return blocks.mean(axis=(1, 3))


def test_node_help_pages_are_served_for_every_node(installed):
    object_info = installed.get("/object_info")
    ours = sorted(n for n, info in object_info.items() if info["python_module"].endswith(PACK))
    assert len(ours) >= 5, ours
    for node_id in ours:
        status, _, body = installed.get_bytes(f"/extensions/{PACK}/docs/{node_id}.md")
        assert status == 200, f"no help page for {node_id}"
        text = body.decode()
        assert text.startswith("# ") and object_info[node_id]["display_name"] in text


def _documented_inputs(node_id: str) -> dict[str, str]:
    """Input name -> its "default" cell, from the Inputs table of the node's help page."""
    text = (REPO / "web" / "docs" / f"{node_id}.md").read_text()
    section = text.split("## Inputs", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[2].strip("`")
    return rows


def test_every_input_and_its_default_is_documented_as_the_server_declares_it(user_install):
    object_info = user_install.get("/object_info")
    ours = [n for n, info in object_info.items() if info["python_module"].endswith(PACK)]
    for node_id in ours:
        info = object_info[node_id]
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        documented = _documented_inputs(node_id)
        names = list(declared)
        if any(len(s) > 1 and s[1].get("control_after_generate") for s in declared.values()):
            names.append("control after generate")
        assert sorted(documented) == sorted(names), node_id
        for name, spec in declared.items():
            options = spec[1] if len(spec) > 1 else {}
            if "default" not in options:
                continue
            default, cell = options["default"], documented[name]
            if isinstance(default, bool):
                assert cell == str(default).lower(), (node_id, name, cell)
            elif isinstance(default, (int, float)):
                assert float(cell) == default, (node_id, name, cell)
            else:
                assert cell == default, (node_id, name, cell)


# ------------------------------------------------------------------------------------------
# The headless runner on the user's install: nothing of the user's is replaced, runners never
# mix inputs
# ------------------------------------------------------------------------------------------

SIZE = 64


def _picture(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)


@pytest.fixture()
def edit_inputs(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.fromarray(_picture(1)).save(folder / "source.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:44, 20:44] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(_picture(2)[:40, :40]).save(folder / "exemplar.png")
    return {name: folder / f"{name}.png" for name in ("source", "mask", "exemplar")}


def _options(server, images: dict[str, Path], out: Path, steps: int = 3):
    from exemplar_core.headless import RunOptions

    return RunOptions(
        workflow=REPO / "workflows/api/basic_exemplar_edit.json",
        server=server.url,
        images=images,
        steps=steps,
        out=out,
        timeout=600,
        quiet=True,
    )


def _far_from_mask(path: Path) -> np.ndarray:
    """Pixels outside the mask's box and its 16 px feather band."""
    picture = np.asarray(Image.open(path).convert("RGB"))
    return np.concatenate([picture[:4].ravel(), picture[60:].ravel()])


def test_a_users_same_named_input_and_an_earlier_result_are_left_untouched(
    user_install, edit_inputs, tmp_path
):
    from exemplar_core.headless import run

    users_file = user_install.input_directory / "source.png"
    Image.fromarray(_picture(99)).save(users_file)
    before = users_file.read_bytes()
    out = tmp_path / "results"
    out.mkdir()
    earlier = out / "pbe_edit_00001_.png"
    earlier.write_bytes(b"an earlier result the user kept")
    saved = run(_options(user_install, edit_inputs, out))
    assert users_file.read_bytes() == before
    assert earlier.read_bytes() == b"an earlier result the user kept"
    assert len(saved) == 1 and saved[0] != earlier and saved[0].parent == out
    assert np.array_equal(_far_from_mask(saved[0]), _far_from_mask(edit_inputs["source"]))


def test_out_naming_an_existing_file_is_refused_before_the_prompt_is_queued(
    user_install, edit_inputs, tmp_path
):
    from exemplar_core.headless import EXIT_USAGE, HeadlessError, run

    queued_before = len(user_install.get("/history"))
    existing = tmp_path / "result.png"
    existing.write_bytes(b"the user's picture")
    with pytest.raises(HeadlessError, match="is an existing file") as info:
        run(_options(user_install, edit_inputs, existing))
    assert info.value.code == EXIT_USAGE
    assert existing.read_bytes() == b"the user's picture"
    assert len(user_install.get("/history")) == queued_before


def test_a_node_error_is_named_without_the_install_path(installed, edit_inputs, tmp_path):
    """ComfyUI imports the pack under its folder's path; the error type the frontend, /history
    and the runner show is the pack's short name instead."""
    from exemplar_core.headless import HeadlessError, run

    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(edit_inputs["mask"])  # nothing to edit
    with pytest.raises(HeadlessError) as info:
        run(_options(installed, edit_inputs, tmp_path / "out", steps=1))
    message = str(info.value)
    assert "paint_by_example.nodes.checks.PaintByExampleInputError: " in message, message
    assert "custom_nodes" not in message and str(pbe_host.REPO_ROOT) not in message, message
    assert "/" not in message.split("PaintByExampleInputError")[0], message


def test_two_runners_with_same_named_inputs_queued_together_each_edit_their_own_image(
    user_install, edit_inputs, tmp_path
):
    from exemplar_core.headless import run

    # A long prompt first, so both runners upload before either of their prompts executes. Its
    # images are put in place here (not the pack's examples: this test is about the runner).
    blocker = json.loads((REPO / "workflows/api/basic_exemplar_edit.json").read_text())
    for node_id, title in (("2", "source"), ("3", "mask"), ("4", "exemplar")):
        name = f"pbe-test-blocker-{title}.png"
        shutil.copyfile(edit_inputs[title], user_install.input_directory / name)
        blocker[node_id]["inputs"]["image"] = name
    blocker["6"]["inputs"]["steps"] = 250
    request = urllib.request.Request(
        user_install.url + "/prompt",
        json.dumps({"prompt": blocker}).encode(),
        {"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=30).read()
    runners = {}
    for name, seed in (("a", 11), ("b", 12)):
        folder = tmp_path / name
        folder.mkdir()
        Image.fromarray(_picture(seed)).save(folder / "source.png")  # same name, other image
        images = {**edit_inputs, "source": folder / "source.png"}
        runners[name] = (images, tmp_path / f"out_{name}")
    results: dict[str, object] = {}

    def runner(name: str) -> None:
        images, out = runners[name]
        try:
            results[name] = run(_options(user_install, images, out))
        except Exception as err:  # reported below
            results[name] = err

    threads = [threading.Thread(target=runner, args=(name,)) for name in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    for name, (images, _) in runners.items():
        assert isinstance(results[name], list), results[name]
        expected = _far_from_mask(images["source"])
        assert np.array_equal(_far_from_mask(results[name][0]), expected), (
            f"runner {name}'s result was computed from another image"
        )


# ------------------------------------------------------------------------------------------
# Start-up in-process: either hook, never over a user's file, never fatal
# ------------------------------------------------------------------------------------------


@pytest.fixture()
def input_folder(host, tmp_path):
    import folder_paths

    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    yield tmp_path / "input"
    folder_paths.set_input_directory(previous)


@pytest.mark.parametrize("on_load_first", [False, True], ids=["0.3.64", "newer"])
def test_start_up_from_either_hook_installs_once_and_keeps_a_users_file(
    host, input_folder, on_load_first
):
    extension = host.module("nodes.extension").PaintByExampleExtension()
    input_folder.mkdir()
    users = input_folder / "pbe_example_source.png"
    users.write_bytes(b"the user's own picture of that name")

    async def load():
        if on_load_first:
            await extension.on_load()
        return await extension.get_node_list()

    nodes = asyncio.run(load())
    assert len(nodes) >= 5
    assert users.read_bytes() == b"the user's own picture of that name"
    for name in ("mask", "exemplar"):
        shipped = (REPO / "example_inputs" / f"{name}.png").read_bytes()
        assert (input_folder / f"pbe_example_{name}.png").read_bytes() == shipped
    (input_folder / "pbe_example_mask.png").unlink()
    asyncio.run(extension.get_node_list())  # once per start-up: no second copy
    assert not (input_folder / "pbe_example_mask.png").exists()


def test_an_unwritable_input_folder_does_not_stop_the_pack_from_loading(host, tmp_path, caplog):
    import folder_paths

    blocked = tmp_path / "a file"
    blocked.write_bytes(b"")
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(blocked / "input"))  # cannot be created
    try:
        extension = host.module("nodes.extension").PaintByExampleExtension()
        nodes = asyncio.run(extension.get_node_list())
    finally:
        folder_paths.set_input_directory(previous)
    assert len(nodes) >= 5
    assert "cannot copy" in caplog.text
