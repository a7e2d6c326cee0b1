"""ComfyUI's event stream (``/ws``): a minimal websocket client (RFC 6455, text frames; binary
preview frames are skipped) and the events of one prompt."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import urllib.parse
from collections.abc import Iterator
from typing import Any

from .client import Client

# The events after which ComfyUI sends nothing more about a prompt.
FINISHING_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


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


def open_websocket(client: Client, timeout: float) -> WebSocket:
    """Connect to the server's event stream for this client (before queueing, so that no event
    of a prompt that finishes at once is missed). Raises HeadlessError when the server cannot
    be reached at all (``Client.check_reachable``), OSError when it offers no event stream."""
    client.check_reachable()
    ws_url = client.server.replace("http", "ws", 1) + f"/ws?clientId={client.client_id}"
    return WebSocket(ws_url, timeout=timeout)


def ends_prompt(kind: str | None, data: dict[str, Any]) -> bool:
    """Whether the event ``kind`` with ``data`` is the last one of its prompt."""
    return kind in FINISHING_EVENTS or (kind == "executing" and data.get("node") is None)


def prompt_events(ws: WebSocket, prompt_id: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(type, data) of the events of ``prompt_id`` and of those naming no prompt, up to and
    including the one that ends the prompt (or until the server closes the stream)."""
    for message in ws.messages():
        kind, data = message.get("type"), message.get("data", {})
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        yield kind, data
        if ends_prompt(kind, data):
            return
