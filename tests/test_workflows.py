"""Workflow templates and their API twins come from one source and agree (no ComfyUI needed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
EXPECTED = {
    "basic_exemplar_edit",
    "stock_ksampler_edit",
    "similarity_sweep",
    "bezier_mask_demo",
    "clip_vision_mapper_edit",
    "mask_grow_and_blur",
    "cutout_exemplar_framing",
    "edit_previews",
    "crop_and_stitch",
    "two_objects_edit",
}


def _build():
    spec = importlib.util.spec_from_file_location("workflows_build", WORKFLOWS / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def test_files_on_disk_are_what_the_single_source_generates():
    build = _build()
    for path, text in build.render_all().items():
        assert path.read_text() == text, f"{path} is stale: run python workflows/build.py"
    assert build.main(["--check"]) == 0


def test_every_template_has_an_api_twin_a_thumbnail_and_nothing_else_is_listed():
    ui = {p.stem for p in WORKFLOWS.glob("*.json")}
    api = {p.stem for p in (WORKFLOWS / "api").glob("*.json")}
    thumbnails = {p.stem for p in WORKFLOWS.glob("*.jpg")}
    assert ui == api == thumbnails == EXPECTED


def test_no_folder_of_the_pack_shadows_the_template_folder():
    # ComfyUI serves a pack's templates from the first of these folders that exists
    # (app/custom_node_manager.py); an earlier one would answer 404 for every template.
    shadowing = ["example_workflows", "example", "examples", "workflow"]
    assert [name for name in shadowing if (WORKFLOWS.parent / name).exists()] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ui_workflow_reads_back_as_its_api_twin(name):
    build = _build()
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert build.ui_to_api(ui) == api


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_api_links_point_at_existing_outputs_of_the_right_type(name):
    build = _build()
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    for node in api.values():
        spec = build.NODE_SPECS[node["class_type"]]
        kinds = dict(spec.inputs)
        for input_name, value in node["inputs"].items():
            if isinstance(value, list):
                source = api[value[0]]
                out_type = build.NODE_SPECS[source["class_type"]].outputs[value[1]][1]
                assert out_type == kinds[input_name], (name, input_name)


def test_workflows_use_the_headless_titles_for_their_image_loaders():
    for path in (WORKFLOWS / "api").glob("*.json"):
        titles = {n["_meta"]["title"] for n in json.loads(path.read_text()).values()}
        assert {"source", "mask", "exemplar", "loader"} <= titles, path.name


def test_ui_links_are_consistent_between_link_table_and_sockets():
    for path in WORKFLOWS.glob("*.json"):
        ui = json.loads(path.read_text())
        nodes = {n["id"]: n for n in ui["nodes"]}
        for link_id, src, src_slot, dst, dst_slot, _kind in ui["links"]:
            assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
            assert link_id in nodes[src]["outputs"][src_slot]["links"]


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_layout_has_no_overlapping_nodes_and_groups_hold_only_their_stage(name):
    build = _build()
    workflow = next(w for w in build.WORKFLOWS if w.name == name)
    nodes = {node.id: node for node in workflow.nodes}
    boxes = {node.id: node.box() for node in workflow.nodes}
    for first in boxes:
        for second in boxes:
            if first < second:
                assert not _overlap(boxes[first], boxes[second]), (name, first, second)
    frames = []
    for group in workflow.groups:
        x, y, w, h = build.group_bounding(group, nodes)
        frame = (x, y, x + w, y + h)
        for node_id, box in boxes.items():  # the frontend moves every node inside a group
            assert _overlap(frame, box) == (node_id in group.members), (name, group.title, node_id)
        frames.append(frame)
    for i, first in enumerate(frames):
        for second in frames[i + 1 :]:
            assert not _overlap(first, second), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_template_opens_at_a_readable_zoom_with_a_note_first(name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    notes = [node for node in ui["nodes"] if node["type"] == "Note"]
    assert len(notes) == 1 and len(notes[0]["widgets_values"][0]) > 200
    assert "Change" in notes[0]["widgets_values"][0]
    ds = ui["extra"]["ds"]
    assert 0.8 <= ds["scale"] <= 1.0  # the frontend draws widget text in full above ~0.57
    x, y = notes[0]["pos"]
    assert (x + ds["offset"][0]) * ds["scale"] >= 0 and (y + ds["offset"][1]) * ds["scale"] >= 0


def test_thumbnails_carry_the_stamp_of_their_template_and_go_stale_when_it_changes():
    build = _build()
    assert build.stale_thumbnails() == []
    for workflow in build.WORKFLOWS:
        with Image.open(build.thumbnail_path(workflow)) as image:
            assert image.format == "JPEG" and image.size == (512, 512)
    workflow = build.WORKFLOWS[0]
    workflow.nodes[-2].inputs["steps"] = 49  # the sampler: the template changed, not its picture
    problems = build.stale_thumbnails()
    assert len(problems) == 1 and problems[0].startswith(f"{workflow.name}.jpg")
    assert build.main(["--check"]) == 1


def _example_inputs_script():
    spec = importlib.util.spec_from_file_location("example_inputs", WORKFLOWS / "example_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_derived_example_inputs_are_what_their_script_makes():
    assert _example_inputs_script().main(["--check"]) == 0


def test_the_second_mask_is_a_region_apart_from_the_first():
    module = _example_inputs_script()
    with Image.open(module.EXAMPLE_INPUTS / "mask2.png") as mask:
        second = mask.getbbox()
    with Image.open(module.EXAMPLE_INPUTS / "mask.png") as mask:
        first = mask.getbbox()
    assert second == module.MASK2_BOX and not _overlap(first, second)  # two separate regions


def test_the_cutout_example_is_the_exemplars_object_on_a_transparent_canvas():
    module = _example_inputs_script()
    with Image.open(module.EXAMPLE_INPUTS / "exemplar_cutout.png") as cutout:
        assert cutout.mode == "RGBA" and cutout.size == module.CANVAS
        alpha = cutout.getchannel("A")
        assert alpha.getextrema() == (0, 255)
        assert alpha.getpixel((0, 0)) == 0 and alpha.getpixel((84, 42)) == 255  # the object
