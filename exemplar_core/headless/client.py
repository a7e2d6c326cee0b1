"""The HTTP side of a running ComfyUI: upload an image, queue a prompt, interrupt it, read
``/history`` and ``/view``, and the server's refusals and failures as messages for the user."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EXIT_USAGE, HeadlessError, ServerUnreachable

DEFAULT_SERVER = "http://127.0.0.1:8188"
UPLOAD_SUBFOLDER = "paint-by-example"  # in ComfyUI's input folder: uploads never meet user files
# How long the runner waits for a server to accept a connection before calling it unreachable.
CONNECT_TIMEOUT = 10.0


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
    """One runner's connection to ComfyUI at ``server`` (``http://host:port``).

    timeout: seconds a request may take. The first request connects once beforehand, for at
    most ``CONNECT_TIMEOUT`` s, so that a wrong ``--server`` fails in seconds, not at the full
    timeout.
    """

    server: str
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timeout: float = 60.0
    _reached: bool = field(default=False, init=False, repr=False)

    def _unreachable(self, err: BaseException) -> ServerUnreachable:
        reason = getattr(err, "reason", None) or err  # a URLError's reason is the OSError
        return ServerUnreachable(
            f"cannot reach ComfyUI at {self.server} ({str(reason) or type(reason).__name__}); "
            f"expected a running ComfyUI there (python main.py --listen ... --port ...): start "
            f"it or correct --server"
        )

    def check_reachable(self) -> None:
        """Connect once, briefly (``CONNECT_TIMEOUT``, or ``timeout`` when shorter); raises
        HeadlessError naming the address when nothing answers. The first request (and the
        event stream's opening) calls it; after one success it returns at once."""
        if self._reached:
            return
        parsed = urllib.parse.urlparse(self.server)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            connection = socket.create_connection(
                (parsed.hostname, port), timeout=min(CONNECT_TIMEOUT, self.timeout)
            )
        except OSError as err:
            raise self._unreachable(err) from err
        connection.close()
        self._reached = True

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        self.check_reachable()
        request = urllib.request.Request(self.server + path, data=data, headers=headers or {})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as err:
            raise self._unreachable(err) from err

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

    def interrupt(self, prompt_id: str | None = None) -> None:
        """``POST /interrupt``: stop the running prompt; with ``prompt_id``, only that prompt
        (ComfyUI ignores the request when another one is running)."""
        body = json.dumps({} if prompt_id is None else {"prompt_id": prompt_id}).encode()
        with self._request("/interrupt", body, {"Content-Type": "application/json"}):
            pass


def wait_history(client: Client, prompt_id: str, timeout: float, quiet: bool) -> dict[str, Any]:
    """The prompt's ``/history`` entry once it has one (polled); raises after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = client.get_json(f"/history/{prompt_id}")
        if prompt_id in history:
            return history[prompt_id]
        time.sleep(0.25)
    raise HeadlessError(f"no result after {timeout:.0f} s (prompt {prompt_id})")


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


def describe_execution_error(data: dict[str, Any]) -> str:
    """The message of an ``execution_error`` (event or history message): node, type, message."""
    return (
        f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
        f"{data.get('exception_type', 'error')}: {data.get('exception_message', '')}".strip()
    )


def describe_failure(status: dict[str, Any]) -> str:
    """The message of a failed history entry (execution_error / interrupted)."""
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return describe_execution_error(data)
        if kind == "execution_interrupted":
            return "the workflow was interrupted"
    return f"the workflow failed: {status.get('status_str', 'unknown status')}"
