"""The real frontend in headless Chromium, on a user's install: every template opened from the
template browser as an artist opens it, checked in the graph the frontend built (no missing node,
every widget holding the template's value, no overlapping nodes, a readable zoom), queued with
the Run button, its prompt (from ``/history``) compared with the template's API twin, its output
image waited for; and one node help page opened from the node library.

Chromium comes from Debian's ``chromium`` package (or ``PBE_CHROMIUM``), driven by pip's
``playwright``; ``.ci/run`` installs both. Screenshots go to ``PBE_SCREENSHOTS`` when it is set
(the README's picture is one of them), else into the test's temporary folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pbe_host
import pytest

REPO = pbe_host.REPO_ROOT
PACK = pbe_host.PACK_FOLDER
TEMPLATES = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
VIEWPORT = {"width": 1920, "height": 1080}
PAGE_ERRORS: list[str] = []  # uncaught exceptions in the page
CHROMIUM_FLAGS = [  # as root, in a sandbox-less container, with no network beyond loopback
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-sync",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
]


def _chromium() -> str | None:
    for candidate in (
        os.environ.get("PBE_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _why_no_browser() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; .ci/run installs it)"
    if _chromium() is None:
        return (
            "no Chromium found (apt-get install chromium, or PBE_CHROMIUM=/path/to/chromium; "
            ".ci/run installs it)"
        )
    return None


pytestmark = pytest.mark.skipif(_why_no_browser() is not None, reason=str(_why_no_browser()))


@pytest.fixture(scope="module")
def build():
    return pbe_host.workflows_build()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("PBE_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def page(user_install):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda error: PAGE_ERRORS.append(f"{error}\n{error.stack}"))
        page.goto(user_install.url)
        page.wait_for_function("window.app && window.app.graph && window.app.vueAppReady")
        page.wait_for_timeout(1000)
        # The frontend (1.27.10) throws one TypeError of its own while it starts (a setting's
        # onChange), with or without this pack: only errors from here on count.
        PAGE_ERRORS.clear()
        yield page
        browser.close()


def _open_from_template_browser(page, name: str) -> list[dict]:
    """Workflow templates as an artist opens them: the dialog (shown on a new install's first
    visit, else from the Templates button), the pack's category, the template's card. Returns
    the cards' thumbnails as the dialog shows them."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    dialog = page.locator(".p-dialog")
    if not dialog.is_visible():
        page.get_by_text("Templates", exact=True).first.click()
    dialog.get_by_text(PACK, exact=True).first.click()
    thumbnails = []
    # A card's picture is fetched when the card is scrolled into view and dropped again when it
    # leaves it (the dialog shows about eight cards): each is read while it is in view.
    for card in TEMPLATES:
        dialog.get_by_text(card, exact=True).first.scroll_into_view_if_needed()
        try:  # a card's picture is fetched, cached and shown; a missing one never loads
            page.wait_for_function(
                """(name) => {
                    const img = document.querySelector(`.p-dialog img[alt="${name}"]`);
                    return img && img.complete && img.naturalWidth > 0;
                }""",
                arg=card,
                timeout=20_000,
            )
        except PlaywrightTimeout:
            pass  # reported by the caller, card by card
        thumbnails.append(
            page.evaluate(
                """(name) => {
                    const img = document.querySelector(`.p-dialog img[alt="${name}"]`);
                    return {name, width: img.naturalWidth, height: img.naturalHeight};
                }""",
                card,
            )
        )
    dialog.get_by_text(name, exact=True).first.click()
    page.wait_for_function("() => !document.querySelector('.p-dialog')")
    return thumbnails


GRAPH_STATE = """() => ({
    nodes: app.graph._nodes.map(n => ({
        id: n.id, type: n.type, title: n.title,
        registered: !!LiteGraph.registered_node_types[n.type],
        rect: Array.from(n.boundingRect),
        // "$$"-named widgets are the frontend's own (image previews), not inputs
        widgets: (n.widgets || []).filter(w => !w.name.startsWith("$$"))
            .map(w => [w.name, w.value]),
    })),
    groups: app.graph.groups.map(g => ({title: g.title, rect: Array.from(g._bounding)})),
    scale: app.canvas.ds.scale,
    offset: Array.from(app.canvas.ds.offset),
    lowQuality: app.canvas.low_quality,
    canvas: [app.canvas.canvas.clientWidth, app.canvas.canvas.clientHeight],
})"""


def _overlap(a, b) -> bool:  # rects as [x, y, w, h]
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _expected_widgets(build, node) -> list[tuple[str, object]]:
    spec = build.NODE_SPECS[node.class_type]
    widgets = []
    for name, kind in spec.inputs:
        if build.is_widget(kind):
            widgets.append((name, node.inputs[name]))
            if name in spec.seeded:
                widgets.append(("control_after_generate", "fixed"))
    if spec.upload:
        widgets.append(("upload", "image"))
    return widgets


def _same(expected, actual) -> bool:
    if isinstance(expected, bool) or not isinstance(expected, (int, float)):
        return expected == actual
    return isinstance(actual, (int, float)) and abs(expected - actual) <= 1e-6 * max(1, expected)


def _check_no_overlap(state: dict) -> None:
    nodes = state["nodes"]
    for i, first in enumerate(nodes):
        for second in nodes[i + 1 :]:
            assert not _overlap(first["rect"], second["rect"]), (
                f"{first['title']!r} and {second['title']!r} overlap on the canvas"
            )


def _check_graph(state: dict, build, workflow) -> None:
    _check_no_overlap(state)
    by_id = {node["id"]: node for node in state["nodes"]}
    assert sorted(by_id) == sorted(node.id for node in workflow.nodes), "nodes missing or extra"
    for node in workflow.nodes:
        shown = by_id[node.id]
        assert shown["registered"], f"{node.class_type} is a missing node in the frontend"
        assert shown["type"] == node.class_type and shown["title"] == node.title
        expected = _expected_widgets(build, node)
        assert [name for name, _ in shown["widgets"]] == [name for name, _ in expected], node.title
        for (name, value), (_, actual) in zip(expected, shown["widgets"], strict=True):
            assert _same(value, actual), f"{node.title}.{name} shows {actual!r}, not {value!r}"
    nodes = list(by_id.values())
    titles = {node.id: node.title for node in workflow.nodes}
    for group, shown in zip(workflow.groups, state["groups"], strict=True):
        inside = {node["title"] for node in nodes if _overlap(shown["rect"], node["rect"])}
        assert inside == {titles[i] for i in group.members}, group.title


def _check_opening_view(state: dict) -> None:
    assert not state["lowQuality"] and state["scale"] >= 0.8, state["scale"]
    note = next(node for node in state["nodes"] if node["type"] == "Note")
    x, y, w, h = note["rect"]
    scale, (dx, dy) = state["scale"], state["offset"]
    left, top = (x + dx) * scale, (y + dy) * scale
    right, bottom = (x + w + dx) * scale, (y + h + dy) * scale
    width, height = state["canvas"]
    assert 0 <= left and right <= width and 0 <= top and bottom <= height, "the Note is off-screen"


def _queue_and_wait(page, server, timeout: float = 600.0) -> dict:
    """Press Run; return the prompt's /history entry once it has finished."""
    from exemplar_core.headless import Client, wait_history

    with page.expect_response(
        lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST"
    ) as answer:
        page.locator("[data-testid=queue-button]").click()
    prompt_id = answer.value.json()["prompt_id"]
    return wait_history(Client(server.url), prompt_id, timeout, quiet=True)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_opens_from_the_browser_runs_from_the_run_button_as_its_api_twin(
    page, user_install, build, screenshots, name, request
):
    workflow = next(w for w in build.WORKFLOWS if w.name == name)
    if workflow.needs_unshipped_models:  # a user puts the files in place, then presses Refresh
        pbe_host.add_model_files(user_install, request.getfixturevalue("vit_l_pair"))
        page.evaluate("() => app.refreshComboInNodes()")
    thumbnails = _open_from_template_browser(page, name)
    for card in thumbnails:  # the cards show pictures, not blank placeholders
        assert (card["width"], card["height"]) == (512, 512), card
    page.wait_for_function(f"() => app.graph._nodes.length === {len(workflow.nodes)}")
    page.wait_for_timeout(1500)  # image previews load and nodes settle
    state = page.evaluate(GRAPH_STATE)
    _check_graph(state, build, workflow)
    _check_opening_view(state)
    page.screenshot(path=str(screenshots / f"{name}.png"))

    entry = _queue_and_wait(page, user_install)
    assert entry["status"]["status_str"] == "success", entry["status"]
    sent = entry["prompt"][2]  # [number, prompt id, prompt, extra data, outputs to execute]
    twin = json.loads((REPO / "workflows/api" / f"{name}.json").read_text())
    assert {k: (v["class_type"], v["inputs"]) for k, v in sent.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in twin.items()
    }
    saves = [node.id for node in workflow.nodes if node.class_type == "SaveImage"]
    page.wait_for_function(
        """(ids) => ids.every(id => {
            const images = app.graph.getNodeById(id).imgs || [];
            return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
        })""",
        arg=saves,
    )
    page.wait_for_timeout(500)
    _check_graph(page.evaluate(GRAPH_STATE), build, workflow)  # previews did not grow nodes
    page.screenshot(path=str(screenshots / f"{name}_result.png"))
    assert PAGE_ERRORS == []


@pytest.mark.parametrize("name", TEMPLATES)
def test_no_two_nodes_overlap_and_the_template_opens_readable(page, name):
    """The template file as the frontend lays it out once its image previews are shown."""
    ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    page.evaluate("(graph) => app.loadGraphData(graph)", ui)
    page.wait_for_function(f"() => app.graph._nodes.length === {len(ui['nodes'])}")
    page.wait_for_function(  # every image loader shows its picture
        """() => app.graph._nodes.filter(n => n.type.startsWith("LoadImage")).every(
            n => (n.imgs || []).length > 0 && n.imgs.every(i => i.complete))"""
    )
    page.wait_for_timeout(500)
    state = page.evaluate(GRAPH_STATE)
    _check_no_overlap(state)
    _check_opening_view(state)


def _node_library_search(page):
    """The node library's search box: a help page left open goes back to the list (its arrow
    button), a closed library opens from the side bar's Nodes button."""
    page.keyboard.press("Escape")
    help_page = page.locator(".node-help-content")
    if help_page.count() and help_page.first.is_visible():
        page.locator("button:has(.pi-arrow-left)").first.click()
    box = page.locator(".node-lib-search-box input").first
    for _ in range(3):
        if box.is_visible():
            return box
        page.get_by_text("Nodes", exact=True).first.click()
        page.wait_for_timeout(500)
    raise AssertionError("the node library's search box did not open")


# (display name, node id, words only in its web/docs page, more words of the page)
HELP_PAGES = [
    (
        "Paint-by-Example Inpaint Sampler",
        "PaintByExample.InpaintSampler",
        "Batches and errors",
        "greys out the area to repaint",
    ),
    (
        "Paint-by-Example Exemplar Mapper",
        "PaintByExample.ExemplarMapper",
        "Against Exemplar Encode",
        "you already use for other nodes serves here too",
    ),
    (
        "Paint-by-Example Crop For Exemplar Edit",
        "PaintByExample.CropForEdit",
        "The same edit as the Inpaint Sampler",
        "Cuts out the window the",
    ),
    (
        "Paint-by-Example Stitch Exemplar Edit",
        "PaintByExample.StitchEdit",
        "Puts edited windows back where",
        "outside the band the output is the image, bit for bit",
    ),
    (
        "Paint-by-Example LoRA Loader",
        "PaintByExample.LoraLoader",
        "Stacking, and the stock loader",
        "one file serves this node and the stock",
    ),
]


@pytest.mark.parametrize(
    ("title", "node_id", "heading", "words"), HELP_PAGES, ids=[h[1] for h in HELP_PAGES]
)
def test_node_help_page_opens_from_the_node_library(page, title, node_id, heading, words):
    _node_library_search(page).fill(title)
    item = page.locator(".node-lib-node-container", has_text=title)
    item.first.hover()
    item.first.locator(".help-button").click()
    help_page = page.locator(".node-help-content")
    help_page.wait_for()
    # Without a page the panel falls back to the node's description and tooltips; these words
    # are only in web/docs/<node id>.md.
    page.wait_for_function(
        f"() => document.querySelector('.node-help-content').innerText.includes({heading!r})"
    )
    assert words in help_page.inner_text()
    assert help_page.locator("table").count() >= 2  # inputs and outputs, rendered as tables
    assert PAGE_ERRORS == []


def test_lora_loader_goes_on_the_canvas_from_the_node_library(page, screenshots):
    """An artist adds the LoRA Loader from the library (a click puts it on the canvas): it comes
    with its two sockets in, two out, and the file list and strength widgets."""
    page.evaluate("() => window.app.graph.clear()")
    _node_library_search(page).fill("Paint-by-Example LoRA Loader")
    page.locator(".node-lib-node-container", has_text="Paint-by-Example LoRA Loader").first.click()
    page.wait_for_function("() => window.app.graph._nodes.length === 1")
    node = page.evaluate(
        """() => { const n = window.app.graph._nodes[0];
        return {type: n.type, inputs: n.inputs.filter(i => !i.widget).map(i => i.type),
                outputs: n.outputs.map(o => o.type),
                widgets: n.widgets.map(w => [w.name, w.value])}; }"""
    )
    assert node["type"] == "PaintByExample.LoraLoader"
    assert node["inputs"] == ["MODEL", "PBE_ENCODER"]
    assert node["outputs"] == ["MODEL", "PBE_ENCODER"]
    assert [name for name, _ in node["widgets"]] == ["lora_name", "strength"]
    assert dict(node["widgets"])["strength"] == 1.0
    page.screenshot(path=str(screenshots / "lora_loader_on_canvas.png"))
    assert PAGE_ERRORS == []
