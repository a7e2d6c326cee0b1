"""Headless runner: run an API-format workflow on a running ComfyUI and download the results.

    python -m exemplar_core.headless workflows/api/basic_exemplar_edit.json \\
        --source photo.png --mask mask.png --exemplar object.png --out results/

It uploads the images (``POST /upload/image``) into the workflow's image loaders (found by their
``_meta.title``: "source", "mask", "exemplar", or any title with ``--image TITLE=PATH``), sets
inputs (``--set TITLE.INPUT=VALUE``, plus shortcuts ``--model``, ``--seed``, ``--steps``), queues
the prompt (``POST /prompt``), streams progress over the websocket (falls back to polling
``/history`` if the websocket is unavailable), downloads every output image (``/view``) and exits
non-zero with the server's error message when validation or execution fails.

Nothing of the user's is ever replaced: uploads go into the input folder's ``paint-by-example/``
subfolder under a name made from the file's content (so a user's own ``input/source.png`` is never
touched, and two runners whose inputs share a file name cannot swap images), without ComfyUI's
``overwrite``; a result whose name is already taken in ``--out`` is saved under a new name; a bad
``--out`` is refused before anything is uploaded or queued.

Mask convention: the mask file is a greyscale (or RGB) image, white = repaint. The templates load
it with ``LoadImageMask`` on the red channel, so no alpha-channel inversion is involved.

Only the Python standard library is used (no ComfyUI, no websocket package).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import mimetypes
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..argtypes import positive_int, positive_seconds

EXIT_OK = 0
EXIT_SERVER_ERROR = 1  # the server refused or failed the workflow
EXIT_USAGE = 2  # bad arguments, unreadable files, no server

IMAGE_LOADERS = ("LoadImage", "LoadImageMask")
UPLOAD_SUBFOLDER = "paint-by-example"  # in ComfyUI's input folder: uploads never meet user files
# How long the runner waits for a server to accept a connection before calling it unreachable.
CONNECT_TIMEOUT = 10.0


class HeadlessError(RuntimeError):
    """A failure with a message for the user and an exit code."""

    def __init__(self, message: str, code: int = EXIT_SERVER_ERROR) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------------
# Workflow editing
# ------------------------------------------------------------------------------------------


def find_node(prompt: dict[str, Any], title: str) -> str:
    """The id of the node whose ``_meta.title`` (case-insensitive) or id is ``title``."""
    if title in prompt:
        return title
    matches = [
        node_id
        for node_id, node in prompt.items()
        if str(node.get("_meta", {}).get("title", "")).lower() == title.lower()
    ]
    if len(matches) != 1:
        titles = sorted(str(n.get("_meta", {}).get("title", i)) for i, n in prompt.items())
        found = "no node" if not matches else f"{len(matches)} nodes"
        raise HeadlessError(
            f"{found} titled {title!r} in the workflow; titles are: {', '.join(titles)}",
            EXIT_USAGE,
        )
    return matches[0]


def set_input(prompt: dict[str, Any], target: str, value: Any) -> None:
    """Set ``TITLE.INPUT`` (or ``ID.INPUT``) to a literal value."""
    if "." not in target:
        raise HeadlessError(f"--set needs TITLE.INPUT=VALUE, got {target!r}", EXIT_USAGE)
    title, name = target.rsplit(".", 1)
    node = prompt[find_node(prompt, title)]
    current = node.get("inputs", {}).get(name)
    if isinstance(current, list):
        raise HeadlessError(
            f"{target} is a link from another node, not a value; set that node instead",
            EXIT_USAGE,
        )
    node.setdefault("inputs", {})[name] = value


def set_all(prompt: dict[str, Any], class_type: str, name: str, value: Any) -> int:
    """Set input ``name`` on every node of ``class_type``; returns how many were set."""
    count = 0
    for node in prompt.values():
        if node.get("class_type") == class_type and name in node.get("inputs", {}):
            node["inputs"][name] = value
            count += 1
    return count


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, lists), otherwise the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_input(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise HeadlessError(
            f"cannot read {path}: {err.strerror or err}; expected an image file to upload",
            EXIT_USAGE,
        ) from err


def upload_name(path: Path, data: bytes) -> str:
    """``<first 20 hex digits of the content's SHA-256><suffix>``: the same bytes always get the
    same name, different bytes (almost surely) never do."""
    suffix = path.suffix.lower() if path.suffix else ".png"
    return hashlib.sha256(data).hexdigest()[:20] + suffix


def prepare_out_dir(out: Path) -> Path:
    """Create ``--out`` (a folder) or refuse it with the reason, before anything is queued."""
    if out.exists() and not out.is_dir():
        raise HeadlessError(
            f"--out {out} is an existing file; --out names a folder for the results", EXIT_USAGE
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HeadlessError(f"cannot create the --out folder {out}: {err}", EXIT_USAGE) from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise HeadlessError(f"cannot write into the --out folder {out}", EXIT_USAGE)
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


# ------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------


def encode_multipart(
    fields: dict[str, str], files: dict[str, tuple[str, bytes]]
) -> tuple[bytes, str]:
    """multipart/form-data body and its content type; files: name -> (filename, data)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for name, (filename, data) in files.items():
        kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {kind}\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Client:
    server: str  # http://host:port
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timeout: float = 60.0

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(self.server + path, data=data, headers=headers or {})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as err:
            raise HeadlessError(
                f"cannot reach ComfyUI at {self.server}: {err}; is it running (python main.py)?",
                EXIT_USAGE,
            ) from err

    def check_reachable(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect once, briefly, so that a wrong --server fails in seconds, not at the first
        request's full timeout."""
        parsed = urllib.parse.urlparse(self.server)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError as err:
            raise HeadlessError(
                f"cannot reach ComfyUI at {self.server} ({err or type(err).__name__}); expected a "
                f"running ComfyUI there (python main.py --listen ... --port ...): start it or "
                f"correct --server",
                EXIT_USAGE,
            ) from err

    def get_json(self, path: str) -> Any:
        with self._request(path) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with self._request(path) as response:
            return response.read()

    def upload_image(self, path: Path, data: bytes | None = None) -> str:
        """Upload into ``input/paint-by-example/`` under a content-hash name, never overwriting
        (``overwrite`` false: ComfyUI reuses an identical file and renames on a clash); returns
        the name a LoadImage node takes (``paint-by-example/<hash>.png``)."""
        if data is None:
            data = read_input(path)
        body, kind = encode_multipart(
            {"type": "input", "subfolder": UPLOAD_SUBFOLDER, "overwrite": "false"},
            {"image": (upload_name(path, data), data)},
        )
        try:
            with self._request("/upload/image", body, {"Content-Type": kind}) as response:
                info = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise HeadlessError(
                f"upload of {path} refused: HTTP {err.code} {err.read()[:300]!r}"
            ) from err
        subfolder = info.get("subfolder") or ""
        return f"{subfolder}/{info['name']}" if subfolder else info["name"]

    def queue(self, prompt: dict[str, Any]) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        try:
            with self._request("/prompt", body, {"Content-Type": "application/json"}) as response:
                return json.loads(response.read())["prompt_id"]
        except urllib.error.HTTPError as err:
            raise HeadlessError(describe_rejection(err.read())) from err


def describe_rejection(body: bytes) -> str:
    """The message of a ``POST /prompt`` 400 answer: the error and each node's errors."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return f"ComfyUI rejected the workflow: {body[:500]!r}"
    error = data.get("error", {})
    lines = [f"ComfyUI rejected the workflow: {error.get('message', error)}"]
    if error.get("details"):
        lines.append(f"  {error['details']}")
    for node_id, info in (data.get("node_errors") or {}).items():
        for item in info.get("errors", []):
            detail = item.get("details") or item.get("message")
            lines.append(f"  node {node_id} ({info.get('class_type')}): {detail}")
    return "\n".join(lines)


def describe_failure(status: dict[str, Any]) -> str:
    """The message of a failed history entry (execution_error / interrupted)."""
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                f"{data.get('exception_type', 'error')}: "
                f"{data.get('exception_message', '')}".strip()
            )
        if kind == "execution_interrupted":
            return "the workflow was interrupted"
    return f"the workflow failed: {status.get('status_str', 'unknown status')}"


# ------------------------------------------------------------------------------------------
# Minimal websocket client (RFC 6455, text frames; binary preview frames are skipped)
# ------------------------------------------------------------------------------------------


class WebSocket:
    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib.parse.urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1024)
            if not chunk:
                raise OSError("connection closed during the websocket handshake")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise OSError(f"websocket refused: {head.splitlines()[0]!r}")

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def messages(self) -> Iterator[dict[str, Any]]:
        """JSON text messages until the server closes the connection."""
        fragments = b""
        while True:
            first, second = self._read(2)
            opcode, final = first & 0x0F, bool(first & 0x80)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:  # close
                return
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if opcode in (0x1, 0x0):
                fragments += payload
                if final:
                    text, fragments = fragments, b""
                    try:
                        yield json.loads(text)
                    except json.JSONDecodeError:
                        continue
            # binary frames (live previews) are ignored

    def close(self) -> None:
        try:
            self._send(0x8, b"")
        except OSError:
            pass
        self.sock.close()


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------


def _log(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def open_websocket(client: Client, timeout: float) -> WebSocket:
    """Connect to the server's event stream for this client (before queueing, so that no event
    of a prompt that finishes at once is missed)."""
    ws_url = client.server.replace("http", "ws", 1) + f"/ws?clientId={client.client_id}"
    return WebSocket(ws_url, timeout=timeout)


def wait_websocket(ws: WebSocket, prompt_id: str, quiet: bool) -> None:
    """Follow progress until the prompt finishes; raises on execution errors. Closes ``ws``."""
    try:
        for message in ws.messages():
            kind, data = message.get("type"), message.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "progress":
                _log(
                    quiet, f"  node {data.get('node')}: step {data.get('value')}/{data.get('max')}"
                )
            elif kind == "executing" and data.get("node") is not None:
                _log(quiet, f"running node {data['node']}")
            elif kind == "execution_error":
                raise HeadlessError(
                    f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type', 'error')}: {data.get('exception_message', '')}"
                )
            elif kind == "execution_interrupted":
                raise HeadlessError("the workflow was interrupted")
            elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                return
    finally:
        ws.close()


def wait_history(client: Client, prompt_id: str, timeout: float, quiet: bool) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = client.get_json(f"/history/{prompt_id}")
        if prompt_id in history:
            return history[prompt_id]
        time.sleep(0.25)
    raise HeadlessError(f"no result after {timeout:.0f} s (prompt {prompt_id})")


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
    for node_id, output in sorted(entry.get("outputs", {}).items(), key=_node_order):
        title = str(prompt.get(node_id, {}).get("_meta", {}).get("title", node_id))
        for image in output.get("images", []):
            if image.get("type") != "output":
                continue
            query = urllib.parse.urlencode(
                {
                    "filename": image["filename"],
                    "subfolder": image.get("subfolder", ""),
                    "type": image["type"],
                }
            )
            data = client.get_bytes(f"/view?{query}")
            saved.append(
                SavedImage(node_id, title, write_new_file(out_dir, image["filename"], data))
            )
    return saved


def _node_order(item: tuple[str, Any]) -> tuple[int, str]:
    node_id = item[0]
    return (int(node_id), node_id) if node_id.isdigit() else (1 << 62, node_id)


@dataclass
class RunOptions:
    workflow: Path
    server: str = "http://127.0.0.1:8188"
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
    try:
        prompt = json.loads(options.workflow.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HeadlessError(
            f"cannot read workflow {options.workflow}: {getattr(err, 'strerror', None) or err}; "
            f"expected an API-format workflow JSON file (workflows/api/*.json)",
            EXIT_USAGE,
        ) from err
    if not isinstance(prompt, dict) or not all(
        isinstance(n, dict) and "class_type" in n for n in prompt.values()
    ):
        raise HeadlessError(
            f"{options.workflow} is not an API-format workflow (use the workflows/api/ twin, or "
            f"export with 'Export (API)' in ComfyUI)",
            EXIT_USAGE,
        )
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
    if options.model is not None and not set_all(
        prompt, "PaintByExample.Loader", "model_name", options.model
    ):
        raise HeadlessError(
            "--model given but the workflow has no Paint-by-Example Loader", EXIT_USAGE
        )
    for name, value in (("seed", options.seed), ("steps", options.steps)):
        if value is not None:
            for class_type in ("PaintByExample.InpaintSampler", "KSampler"):
                set_all(prompt, class_type, name, value)
    for target, value in options.sets:
        set_input(prompt, target, value)

    client = Client(options.server, timeout=min(options.timeout, 60.0))
    client.check_reachable(min(CONNECT_TIMEOUT, options.timeout))
    for node_id, title, path, data in uploads:
        prompt[node_id]["inputs"]["image"] = client.upload_image(path, data)
        _log(options.quiet, f"uploaded {path} -> {title} ({prompt[node_id]['inputs']['image']})")
    try:
        ws: WebSocket | None = open_websocket(client, options.timeout)
    except OSError as err:  # no websocket (proxy, old server): poll instead
        ws = None
        _log(options.quiet, f"websocket unavailable ({err}); polling /history")
    try:
        prompt_id = client.queue(prompt)
    except BaseException:
        if ws is not None:
            ws.close()
        raise
    _log(options.quiet, f"queued prompt {prompt_id}")
    if ws is not None:
        try:
            wait_websocket(ws, prompt_id, options.quiet)
        except OSError as err:  # the stream broke off: poll instead
            _log(options.quiet, f"websocket lost ({err}); polling /history")
    entry = wait_history(client, prompt_id, options.timeout, options.quiet)
    status = entry.get("status", {})
    if status.get("status_str") == "error" or status.get("completed") is False:
        raise HeadlessError(describe_failure(status))
    return download_outputs(client, entry, out_dir, prompt)


DESCRIPTION = (
    "Run an API-format workflow on a running ComfyUI: upload images, queue, stream progress, "
    "download the results. Exits 1 with the server's message when ComfyUI rejects or fails the "
    "workflow, 2 on bad arguments or when the server cannot be reached."
)


def server_url(text: str) -> str:
    """argparse type: an http(s)://host[:port] address (a bare host:port gets http://)."""
    url = text.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    parsed = urllib.parse.urlparse(url)
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} has an invalid port; expected http://HOST:PORT"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(
            f"expected an address like http://127.0.0.1:8188, got {text!r}"
        )
    return url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's options (shared by ``python -m exemplar_core headless`` and this module)."""
    parser.add_argument("workflow", type=Path, help="API-format workflow (workflows/api/*.json)")
    parser.add_argument(
        "--server",
        type=server_url,
        default="http://127.0.0.1:8188",
        help="address of the running ComfyUI (default: %(default)s)",
    )
    parser.add_argument(
        "--source", type=Path, help="image for the loader titled 'source' (default: none)"
    )
    parser.add_argument(
        "--mask",
        type=Path,
        help="mask image for the loader titled 'mask', white = repaint (default: none)",
    )
    parser.add_argument(
        "--exemplar", type=Path, help="image for the loader titled 'exemplar' (default: none)"
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="TITLE=PATH",
        help="upload PATH into the image loader titled TITLE; repeatable (default: none)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TITLE.INPUT=VALUE",
        help="set a node input; VALUE is JSON when it parses; repeatable (default: none)",
    )
    parser.add_argument(
        "--model",
        help="model file name for every Paint-by-Example Loader (default: the workflow's own)",
    )
    parser.add_argument(
        "--seed", type=int, help="seed for every sampler (default: the workflow's own)"
    )
    parser.add_argument(
        "--steps", type=positive_int, help="steps for every sampler (default: the workflow's own)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("comfyui-results"),
        help="folder for the downloaded images, created if missing; a name already taken there "
        "gets a -2, -3... suffix, nothing is overwritten (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=600.0,
        help="seconds to wait for the workflow to finish (default: %(default)g)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr (default: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exemplar_core.headless", description=DESCRIPTION
    )
    add_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace) -> RunOptions:
    images: dict[str, Path] = {}
    for title in ("source", "mask", "exemplar"):
        if getattr(args, title) is not None:
            images[title] = getattr(args, title)
    for item in args.image:
        title, sep, path = item.partition("=")
        if not sep:
            raise HeadlessError(f"--image needs TITLE=PATH, got {item!r}", EXIT_USAGE)
        images[title] = Path(path)
    sets = []
    for item in args.set:
        target, sep, value = item.partition("=")
        if not sep:
            raise HeadlessError(f"--set needs TITLE.INPUT=VALUE, got {item!r}", EXIT_USAGE)
        sets.append((target, parse_value(value)))
    return RunOptions(
        workflow=args.workflow,
        server=args.server.rstrip("/"),
        images=images,
        sets=sets,
        model=args.model,
        seed=args.seed,
        steps=args.steps,
        out=args.out,
        timeout=args.timeout,
        quiet=args.quiet,
    )


def run_args(args: argparse.Namespace) -> int:
    """Run parsed arguments; prints the saved files, or the error, and returns the exit code."""
    try:
        run(options_from_args(args))
    except HeadlessError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
