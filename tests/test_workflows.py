"""Workflow templates and their API twins come from one source and agree (no ComfyUI needed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
EXPECTED = {"basic_exemplar_edit", "stock_ksampler_edit", "similarity_sweep", "bezier_mask_demo"}


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


def test_every_template_has_an_api_twin_and_nothing_else_is_listed():
    ui = {p.stem for p in WORKFLOWS.glob("*.json")}
    api = {p.stem for p in (WORKFLOWS / "api").glob("*.json")}
    assert ui == api == EXPECTED


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
