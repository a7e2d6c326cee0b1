"""The headless runner against a stand-in ComfyUI HTTP server (stdlib), no ComfyUI needed.

The real server is exercised by tests/host/test_server.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exemplar_core import headless

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows/api/basic_exemplar_edit.json"


def _form_field(body: bytes, name: str) -> str:
    marker = f'name="{name}"\r\n\r\n'.encode()
    return body.split(marker)[1].split(b"\r\n")[0].decode() if marker in body else ""


class FakeComfy(BaseHTTPRequestHandler):
    state: dict = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/upload/image":
            name = data.split(b'filename="')[1].split(b'"')[0].decode()
            fields = {key: _form_field(data, key) for key in ("type", "subfolder", "overwrite")}
            self.state.setdefault("uploads", []).append({"name": name, **fields})
            body = {"name": name, "subfolder": fields["subfolder"], "type": "input"}
            self._send(200, json.dumps(body).encode())
        elif self.path == "/prompt":
            prompt = json.loads(data)["prompt"]
            self.state["prompt"] = prompt
            if self.state.get("reject"):
                body = {
                    "error": {"message": "Prompt outputs failed validation"},
                    "node_errors": {
                        "1": {
                            "class_type": "PaintByExample.Loader",
                            "errors": [{"details": "model not found"}],
                        }
                    },
                }
                self._send(400, json.dumps(body).encode())
            else:
                self._send(200, json.dumps({"prompt_id": "p1", "number": 0}).encode())

    def do_GET(self):
        if self.path.startswith("/history/p1"):
            if self.state.get("fail"):
                status = {
                    "status_str": "error",
                    "completed": False,
                    "messages": [
                        [
                            "execution_error",
                            {
                                "node_id": "6",
                                "node_type": "X",
                                "exception_type": "ValueError",
                                "exception_message": "mask 0 is empty",
                            },
                        ]
                    ],
                }
                entry = {"status": status, "outputs": {}}
            else:
                entry = {
                    "status": {"status_str": "success", "completed": True},
                    "outputs": {
                        "7": {
                            "images": [{"filename": "out.png", "subfolder": "", "type": "output"}]
                        }
                    },
                }
            self._send(200, json.dumps({"p1": entry}).encode())
        elif self.path.startswith("/view?"):
            self._send(200, b"PNGDATA", "image/png")
            self.state.setdefault("downloads", 0)
            self.state["downloads"] += 1
        else:  # /ws included: the runner falls back to polling /history
            self._send(404, b"{}")


@pytest.fixture()
def fake_server():
    FakeComfy.state = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeComfy)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", FakeComfy.state
    httpd.shutdown()


@pytest.fixture()
def inputs(tmp_path):
    paths = {}
    for name in ("source", "mask", "exemplar"):
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(b"\x89PNG fake " + name.encode())
    return paths


def _args(server, inputs, out, *extra):
    return [
        str(WORKFLOW),
        "--server",
        server,
        "--source",
        str(inputs["source"]),
        "--mask",
        str(inputs["mask"]),
        "--exemplar",
        str(inputs["exemplar"]),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_uploads_sets_inputs_queues_and_downloads(fake_server, inputs, tmp_path):
    server, state = fake_server
    code = headless.main(
        _args(
            server,
            inputs,
            tmp_path / "out",
            "--model",
            "m.safetensors",
            "--seed",
            "9",
            "--set",
            "sampler.resolution=256",
            "--set",
            "encode.resize=center_crop",
        )
    )
    assert code == 0
    assert (tmp_path / "out/out.png").read_bytes() == b"PNGDATA"
    prompt = state["prompt"]
    names = {
        title: headless.upload_name(inputs[title], inputs[title].read_bytes())
        for title in ("source", "mask", "exemplar")
    }
    assert [upload["name"] for upload in state["uploads"]] == list(names.values())
    for upload in state["uploads"]:
        assert upload["subfolder"] == "paint-by-example" and upload["overwrite"] == "false"
    assert prompt["2"]["inputs"]["image"] == f"paint-by-example/{names['source']}"
    assert prompt["3"]["inputs"]["image"] == f"paint-by-example/{names['mask']}"
    assert prompt["1"]["inputs"]["model_name"] == "m.safetensors"
    assert prompt["6"]["inputs"]["seed"] == 9 and prompt["6"]["inputs"]["resolution"] == 256
    assert prompt["5"]["inputs"]["resize"] == "center_crop"


def test_validation_rejection_exits_one_with_the_node_errors(fake_server, inputs, tmp_path, capsys):
    server, state = fake_server
    state["reject"] = True
    assert headless.main(_args(server, inputs, tmp_path)) == headless.EXIT_SERVER_ERROR
    err = capsys.readouterr().err
    assert "failed validation" in err and "model not found" in err


def test_execution_error_exits_one_with_the_exception_message(
    fake_server, inputs, tmp_path, capsys
):
    server, state = fake_server
    state["fail"] = True
    assert headless.main(_args(server, inputs, tmp_path)) == headless.EXIT_SERVER_ERROR
    assert "mask 0 is empty" in capsys.readouterr().err


def test_unknown_title_and_unreachable_server_are_usage_errors(inputs, tmp_path, capsys):
    code = headless.main(_args("http://127.0.0.1:9", inputs, tmp_path, "--set", "nope.x=1"))
    assert code == headless.EXIT_USAGE
    prompt = json.loads(WORKFLOW.read_text())
    with pytest.raises(headless.HeadlessError, match="no node titled 'nope'"):
        headless.set_input(prompt, "nope.steps", 1)
    with pytest.raises(headless.HeadlessError, match="link from another node"):
        headless.set_input(prompt, "sampler.model", 1)


def test_ui_format_workflow_is_refused_with_a_hint(tmp_path, capsys):
    ui = Path(__file__).resolve().parents[1] / "workflows/basic_exemplar_edit.json"
    assert headless.main([str(ui), "--quiet"]) == headless.EXIT_USAGE
    assert "not an API-format workflow" in capsys.readouterr().err


def test_multipart_body_carries_fields_and_file():
    body, kind = headless.encode_multipart({"type": "input"}, {"image": ("a.png", b"DATA")})
    boundary = kind.split("boundary=")[1]
    assert body.startswith(f"--{boundary}".encode())
    assert body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="type"\r\n\r\ninput' in body and b'filename="a.png"' in body and b"DATA" in body


def test_help_runs():
    with pytest.raises(SystemExit) as info:
        headless.main(["--help"])
    assert info.value.code == 0


def test_upload_names_come_from_the_content_not_the_file_name(tmp_path):
    first, second, again = tmp_path / "a/source.png", tmp_path / "b/source.png", tmp_path / "c.PNG"
    for path, data in ((first, b"one"), (second, b"two"), (again, b"one")):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    name = headless.upload_name
    assert name(first, b"one") != name(second, b"two")  # same file name, different images
    assert name(first, b"one")[:20] == name(again, b"one")[:20]  # same image, any file name
    assert name(again, b"one").endswith(".png") and "source" not in name(first, b"one")


def test_an_existing_result_in_out_is_kept_and_the_new_one_gets_a_free_name(
    fake_server, inputs, tmp_path, capsys
):
    server, _ = fake_server
    out = tmp_path / "out"
    out.mkdir()
    (out / "out.png").write_bytes(b"an earlier result")
    (out / "out-2.png").write_bytes(b"another earlier result")
    assert headless.main(_args(server, inputs, out)) == 0
    assert (out / "out.png").read_bytes() == b"an earlier result"
    assert (out / "out-2.png").read_bytes() == b"another earlier result"
    assert (out / "out-3.png").read_bytes() == b"PNGDATA"
    assert capsys.readouterr().out.strip() == str(out / "out-3.png")


def test_out_naming_a_file_is_refused_before_anything_is_uploaded_or_queued(
    fake_server, inputs, tmp_path, capsys
):
    server, state = fake_server
    existing = tmp_path / "result.png"
    existing.write_bytes(b"the user's picture")
    assert headless.main(_args(server, inputs, existing)) == headless.EXIT_USAGE
    assert "is an existing file" in capsys.readouterr().err
    assert existing.read_bytes() == b"the user's picture"
    assert "uploads" not in state and "prompt" not in state
    blocked = tmp_path / "blocked"
    blocked.write_bytes(b"")
    assert headless.main(_args(server, inputs, blocked / "sub")) == headless.EXIT_USAGE
    assert "cannot create the --out folder" in capsys.readouterr().err
    assert "uploads" not in state and "prompt" not in state


def test_a_missing_input_is_refused_before_anything_is_uploaded(
    fake_server, inputs, tmp_path, capsys
):
    server, state = fake_server
    inputs["exemplar"].unlink()
    assert headless.main(_args(server, inputs, tmp_path / "out")) == headless.EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err
    assert "uploads" not in state and "prompt" not in state


def test_importing_the_runner_loads_no_model_code():
    """The runner is standard library only: a service can drive ComfyUI without torch."""
    probe = (
        "import sys, exemplar_core.headless; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'PIL')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"
