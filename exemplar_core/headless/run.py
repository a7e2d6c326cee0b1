"""Running a workflow: check ``--out``, upload the images, queue, follow the prompt (websocket,
else ``/history``), download every output image without replacing a file."""

from __future__ import annotations

import itertools
import os
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import node_ids
from ..files import DestinationError, check_out_folder
from .client import (
    DEFAULT_SERVER,
    Client,
    describe_execution_error,
    describe_failure,
    read_input,
    wait_history,
)
from .errors import EXIT_USAGE, HeadlessError
from .websocket import WebSocket, open_websocket, prompt_events
from .workflow import find_node, load_workflow, set_all, set_input

IMAGE_LOADERS = ("LoadImage", "LoadImageMask")
# the samplers whose seed and steps --seed and --steps set
SAMPLERS = (node_ids.INPAINT_SAMPLER, "KSampler")


def prepare_out_dir(out: Path) -> Path:
    """Create ``--out`` (a folder) or refuse it with the reason, before anything is queued."""
    try:
        check_out_folder(out, "--out")
    except DestinationError as err:
        raise HeadlessError(str(err), EXIT_USAGE) from err
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HeadlessError(f"cannot create the --out folder {out}: {err}", EXIT_USAGE) from err
    return out


def write_new_file(folder: Path, name: str, data: bytes) -> Path:
    """Write ``folder/name``, or ``stem-2.ext``, ``stem-3.ext``... when that name is taken: an
    existing file is never replaced (exclusive create, so concurrent runners cannot race)."""
    stem, suffix = os.path.splitext(Path(name).name)
    for n in itertools.count(1):
        target = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            with open(target, "xb") as out:
                out.write(data)
        except FileExistsError:
            continue
        return target
    raise AssertionError("unreachable")


def say(quiet: bool, text: str) -> None:
    """A progress line on stderr, unless ``quiet``."""
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def wait_websocket(ws: WebSocket, prompt_id: str, quiet: bool) -> None:
    """Follow progress until the prompt finishes; raises on execution errors. Closes ``ws``."""
    try:
        for kind, data in prompt_events(ws, prompt_id):
            if kind == "progress":
                say(quiet, f"  node {data.get('node')}: step {data.get('value')}/{data.get('max')}")
            elif kind == "executing" and data.get("node") is not None:
                say(quiet, f"running node {data['node']}")
            elif kind == "execution_error":
                raise HeadlessError(describe_execution_error(data))
            elif kind == "execution_interrupted":
                raise HeadlessError("the workflow was interrupted")
    finally:
        ws.close()


@dataclass(frozen=True)
class SavedImage:
    """One downloaded result: the node that saved it (id and title) and where it now is."""

    node_id: str
    title: str
    path: Path


def download_outputs(
    client: Client, entry: dict[str, Any], out_dir: Path, prompt: dict[str, Any]
) -> list[SavedImage]:
    """Every output image of a finished prompt, in node-id order, into ``out_dir`` (never over
    an existing file)."""
    saved = []
    for node_id, output in sorted(entry.get("outputs", {}).items(), key=lambda i: node_order(i[0])):
        title = str(prompt.get(node_id, {}).get("_meta", {}).get("title", node_id))
        for image in output.get("images", []):
            if image.get("type") != "output":
                continue
            data = client.get_bytes(view_path(image))
            saved.append(
                SavedImage(node_id, title, write_new_file(out_dir, image["filename"], data))
            )
    return saved


def view_path(image: dict[str, Any]) -> str:
    """The ``/view`` request of one output image of a ``/history`` entry."""
    query = {
        "filename": image["filename"],
        "subfolder": image.get("subfolder", ""),
        "type": image["type"],
    }
    return f"/view?{urllib.parse.urlencode(query)}"


def node_order(node_id: str) -> tuple[int, str]:
    """Sort key of node ids: numeric ids in number order, then the others."""
    return (int(node_id), node_id) if node_id.isdigit() else (1 << 62, node_id)


@dataclass
class RunOptions:
    workflow: Path
    server: str = DEFAULT_SERVER
    images: dict[str, Path] = field(default_factory=dict)  # title -> file to upload
    sets: list[tuple[str, Any]] = field(default_factory=list)  # ("TITLE.INPUT", value)
    model: str | None = None
    seed: int | None = None
    steps: int | None = None
    out: Path = Path("comfyui-results")
    timeout: float = 600.0
    quiet: bool = False


def run(options: RunOptions) -> list[Path]:
    """Upload, queue, follow, download. Prints and returns the saved files; raises
    HeadlessError."""
    saved = run_outputs(options)
    for item in saved:
        print(item.path)
    return [item.path for item in saved]


def run_outputs(options: RunOptions) -> list[SavedImage]:
    """``run`` without printing, with the saving node of each result."""
    prompt = load_workflow(options.workflow)
    # Everything that can be refused is checked before the server is touched.
    out_dir = prepare_out_dir(options.out)
    uploads = []
    for title, path in options.images.items():
        node_id = find_node(prompt, title)
        if prompt[node_id]["class_type"] not in IMAGE_LOADERS:
            raise HeadlessError(
                f"node {title!r} is a {prompt[node_id]['class_type']}, not an image loader",
                EXIT_USAGE,
            )
        uploads.append((node_id, title, path, read_input(path)))
    apply_options(prompt, options.model, options.seed, options.steps, options.sets)

    # The first request connects briefly first, so an unreachable server fails in seconds.
    client = Client(options.server, timeout=min(options.timeout, 60.0))
    for node_id, title, path, data in uploads:
        prompt[node_id]["inputs"]["image"] = client.upload_image(path, data)
        say(options.quiet, f"uploaded {path} -> {title} ({prompt[node_id]['inputs']['image']})")
    entry = queue_and_wait(client, prompt, options.timeout, options.quiet)
    return download_outputs(client, entry, out_dir, prompt)


def apply_options(
    prompt: dict[str, Any],
    model: str | None,
    seed: int | None,
    steps: int | None,
    sets: list[tuple[str, Any]],
) -> None:
    """``--model``, ``--seed``, ``--steps`` and each ``--set`` (``("TITLE.INPUT", value)``) into
    ``prompt``, in place."""
    if model is not None and not set_all(prompt, node_ids.LOADER, "model_name", model):
        raise HeadlessError(
            "--model given but the workflow has no Paint-by-Example Loader", EXIT_USAGE
        )
    for name, value in (("seed", seed), ("steps", steps)):
        if value is not None:
            for class_type in SAMPLERS:
                set_all(prompt, class_type, name, value)
    for target, value in sets:
        set_input(prompt, target, value)


def queue_and_wait(
    client: Client, prompt: dict[str, Any], timeout: float, quiet: bool
) -> dict[str, Any]:
    """Queue ``prompt`` and follow it (websocket, else ``/history``) until it finishes; its
    ``/history`` entry, or HeadlessError with the server's message when it failed."""
    try:
        ws: WebSocket | None = open_websocket(client, timeout)
    except OSError as err:  # no websocket (proxy, old server): poll instead
        ws = None
        say(quiet, f"websocket unavailable ({err}); polling /history")
    try:
        prompt_id = client.queue(prompt)
    except BaseException:
        if ws is not None:
            ws.close()
        raise
    say(quiet, f"queued prompt {prompt_id}")
    if ws is not None:
        try:
            wait_websocket(ws, prompt_id, quiet)
        except OSError as err:  # the stream broke off: poll instead
            say(quiet, f"websocket lost ({err}); polling /history")
    entry = wait_history(client, prompt_id, timeout, quiet)
    status = entry.get("status", {})
    if status.get("status_str") == "error" or status.get("completed") is False:
        raise HeadlessError(describe_failure(status))
    return entry
