"""The headless farm (``headless --manifest``) over stand-in ComfyUI servers (stdlib HTTP, in
this process): jobs shared by servers, each done once, resumed, a server lost mid-run, bad jobs.

A real ComfyUI pair is driven by tests/host/test_farm_host.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exemplar_core import headless
from exemplar_core.batch.results import load_results, read_records

ROOT = Path(__file__).resolve().parents[1]


class FakeComfy:
    """A stand-in ComfyUI: stores uploads, runs a prompt at once (``work`` s), answers /history
    and /view (the output's bytes name the server, the job's source and its seed). ``die_at``:
    the queue request number (1-based) on which it drops the connection and stops for good;
    ``interrupt_at``: the one on which this process gets a SIGINT (as from Ctrl-C).
    A source whose bytes contain ``BAD`` fails on the server as an execution error; one that
    contains ``ODD`` gets a garbled answer; one that contains ``CRASH`` takes the server down."""

    def __init__(
        self, name: str, die_at: int | None = None, work: float = 0.05, interrupt_at: int = 0
    ) -> None:
        self.name, self.die_at, self.work, self.interrupt_at = name, die_at, work, interrupt_at
        self.uploads: dict[str, bytes] = {}
        self.prompts: list[dict] = []
        self.history: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.active = self.most_active = 0  # prompts running at once, now and at most
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/upload/image":
                    part = data.split(b'filename="')[1]
                    name = part.split(b'"')[0].decode()
                    content = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
                    with fake.lock:
                        fake.uploads[name] = content
                    self._send(200, json.dumps({"name": name, "subfolder": "pbe"}).encode())
                    return
                fake.handle_prompt(self, json.loads(data)["prompt"])

            def do_GET(self):
                if self.path.startswith("/history/"):
                    prompt_id = self.path.split("/")[-1]
                    entry = fake.history.get(prompt_id)
                    self._send(200, json.dumps({prompt_id: entry} if entry else {}).encode())
                elif self.path.startswith("/view?"):
                    name = self.path.split("filename=")[1].split("&")[0]
                    self._send(200, fake.outputs[name])
                else:  # /ws: no event stream here, the runner polls /history
                    self._send(404, b"{}")

        self.outputs: dict[str, bytes] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        serve = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        serve.start()

    def handle_prompt(self, handler, prompt: dict) -> None:
        source = self.uploads[prompt["2"]["inputs"]["image"].split("/")[-1]]
        with self.lock:
            self.prompts.append(prompt)
            number = len(self.prompts)
        if number == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        if number == self.die_at or b"CRASH" in source:
            handler.close_connection = True  # no answer: the server went down mid-request
            threading.Thread(target=self.stop).start()
            return
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.work)
        with self.lock:
            self.active -= 1
        prompt_id = f"{self.name}-{number}"
        if b"ODD" in source:  # an answer the runner cannot read: an image without its name
            image = {"subfolder": "", "type": "output"}
            self.history[prompt_id] = {"status": {}, "outputs": {"7": {"images": [image]}}}
        elif b"BAD" in source:
            message = {"node_id": "6", "node_type": "X", "exception_message": "mask is empty"}
            status = {"status_str": "error", "messages": [["execution_error", message]]}
            self.history[prompt_id] = {"status": status, "outputs": {}}
        else:
            output = {"server": self.name, "source": source.decode(), **prompt["6"]["inputs"]}
            self.outputs[f"{prompt_id}.png"] = json.dumps(output, default=str).encode()
            image = {"filename": f"{prompt_id}.png", "subfolder": "", "type": "output"}
            self.history[prompt_id] = {
                "status": {"status_str": "success", "completed": True},
                "outputs": {"7": {"images": [image]}},
            }
        handler._send(200, json.dumps({"prompt_id": prompt_id}).encode())

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def servers():
    made: list[FakeComfy] = []

    def make(name: str, **kwargs) -> FakeComfy:
        made.append(FakeComfy(name, **kwargs))
        return made[-1]

    yield make
    for server in made:
        try:
            server.stop()
        except OSError:
            pass


def write_manifest(folder: Path, jobs: dict[str, dict], sources: dict[str, bytes]) -> Path:
    """Job id -> extra fields; each job gets its own source (bytes from ``sources``, else the
    id), a shared mask and exemplar."""
    for name in ("mask", "exemplar"):
        (folder / f"{name}.png").write_bytes(f"fake {name}".encode())
    lines = []
    for job_id, extra in jobs.items():
        (folder / f"{job_id}-source.png").write_bytes(sources.get(job_id, job_id.encode()))
        row = {"id": job_id, "source": f"{job_id}-source.png", "mask": "mask.png"}
        lines.append(json.dumps({**row, "exemplar": "exemplar.png", **extra}))
    manifest = folder / "jobs.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def farm(
    manifest: Path, out: Path, *servers: FakeComfy, extra: tuple[str, ...] = (), quiet=True
) -> int:
    args = ["--manifest", str(manifest), "--out", str(out), *extra]
    args += ["--quiet"] if quiet else []
    for server in servers:
        args += ["--server", server.url]
    return headless.main(args)


def output_of(out: Path, job_id: str) -> dict:
    return json.loads((out / f"{job_id}.png").read_bytes())


def test_two_servers_share_the_jobs_and_each_job_runs_once(servers, tmp_path, capsys):
    first, second = servers("a"), servers("b")
    ids = [f"job{i}" for i in range(6)]
    jobs = {job_id: {} for job_id in ids}
    jobs["job0"] = {"seed": 7, "similarity": 3.5, "size": 256, "exemplar_mask": "mask.png"}
    manifest = write_manifest(tmp_path, jobs, {})
    out = tmp_path / "out"
    assert farm(manifest, out, first, second) == headless.EXIT_OK
    assert first.prompts and second.prompts  # both servers worked
    assert first.most_active == second.most_active == 1  # one job in flight on each
    queued = [p["2"]["inputs"]["image"] for p in first.prompts + second.prompts]
    assert len(queued) == len(ids) == len(set(queued))  # each job queued once
    results = load_results(out)
    assert sorted(results) == ids
    for job_id in ids:
        made = output_of(out, job_id)
        assert made["source"] == job_id  # the job's own upload reached its server
        server = first if made["server"] == "a" else second
        assert results[job_id]["worker"] == server.url and results[job_id]["error"] is None
        assert results[job_id]["output"] == f"{job_id}.png"
    made = output_of(out, "job0")
    assert (made["seed"], made["similarity"], made["resolution"]) == (7, 3.5, 256)
    assert results["job0"]["seed"] == 7 and results["job0"]["settings"]["similarity"] == 3.5
    assert results["job1"]["seed"] == 0  # the workflow's own seed where the job gives none
    prompt = next(p for p in first.prompts + second.prompts if "8" in p)  # job0's
    assert prompt["8"]["class_type"] == "LoadImageMask" and prompt["8"]["_meta"]["title"]
    assert prompt["5"]["inputs"]["exemplar_mask"] == ["8", 0]
    assert "6 done, 0 skipped, 0 failed" in capsys.readouterr().out


def test_a_server_down_at_the_start_is_left_out_and_none_up_is_refused(servers, tmp_path, capsys):
    up, down = servers("up"), servers("down")
    down.stop()
    manifest = write_manifest(tmp_path, {"j1": {}, "j2": {}}, {})
    assert farm(manifest, tmp_path / "out", down, up, quiet=False) == 0
    assert f"leaving out {down.url}" in capsys.readouterr().err and len(up.prompts) == 2
    assert farm(manifest, tmp_path / "other", down) == headless.EXIT_USAGE
    assert "none of the servers answers" in capsys.readouterr().err
    assert not (tmp_path / "other/batch-run.json").exists()  # nothing claimed


def test_per_server_keeps_that_many_jobs_in_flight_on_a_server(servers, tmp_path):
    server = servers("a", work=0.4)
    manifest = write_manifest(tmp_path, {f"job{i}": {} for i in range(4)}, {})
    assert farm(manifest, tmp_path / "out", server, extra=("--per-server", "2")) == 0
    assert server.most_active == 2 and len(server.prompts) == 4


def test_a_rerun_skips_finished_jobs_and_a_changed_default_is_refused(servers, tmp_path, capsys):
    server = servers("a")
    manifest = write_manifest(tmp_path, {"j1": {}, "j2": {}}, {})
    out = tmp_path / "out"
    assert farm(manifest, out, server) == 0
    before = (out / "j1.png").read_bytes()
    assert farm(manifest, out, server) == 0
    assert len(server.prompts) == 2  # nothing queued again
    assert (out / "j1.png").read_bytes() == before
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert farm(manifest, out, server, extra=("--seed", "5")) == headless.EXIT_USAGE
    assert "other settings" in capsys.readouterr().err and len(server.prompts) == 2


def test_a_server_that_dies_mid_run_is_dropped_and_its_job_done_elsewhere(
    servers, tmp_path, capsys
):
    dying, steady = servers("dying", die_at=2, work=0.1), servers("steady", work=0.1)
    ids = [f"job{i}" for i in range(5)]
    manifest = write_manifest(tmp_path, dict.fromkeys(ids, {}), {})
    out = tmp_path / "out"
    assert farm(manifest, out, dying, steady, quiet=False) == 0
    assert f"dropped server {dying.url}" in capsys.readouterr().err
    lost = dying.prompts[1]["2"]["inputs"]["image"]  # the job it was running when it died
    results = load_results(out)
    assert sorted(results) == ids and all(r["error"] is None for r in results.values())
    assert sorted(path.name for path in out.glob("*.png")) == [f"{i}.png" for i in ids]
    redone = [p for p in steady.prompts if p["2"]["inputs"]["image"] == lost]
    assert len(redone) == 1  # done once, on the server still up
    assert sum(r["worker"] == dying.url for r in results.values()) == 1


def test_when_every_server_is_down_the_rest_is_left_for_the_next_run(servers, tmp_path, capsys):
    ids = [f"job{i}" for i in range(4)]
    manifest = write_manifest(tmp_path, dict.fromkeys(ids, {}), {})
    out = tmp_path / "out"
    assert farm(manifest, out, servers("only", die_at=2)) == headless.EXIT_SERVER_ERROR
    assert "stopped by every server going down with 3 left" in capsys.readouterr().out
    assert [r["id"] for r in read_records(out)] == ["job0"]  # the others are not recorded
    again = servers("again")
    assert farm(manifest, out, again) == 0
    assert len(again.prompts) == 3 and sorted(load_results(out)) == ids
    assert [output_of(out, i)["server"] for i in ids] == ["only", "again", "again", "again"]


def test_ctrl_c_lets_the_job_in_flight_finish_and_the_next_run_does_the_rest(
    servers, tmp_path, capsys
):
    server = servers("a", work=0.3, interrupt_at=1)
    ids = [f"job{i}" for i in range(4)]
    manifest = write_manifest(tmp_path, dict.fromkeys(ids, {}), {})
    out = tmp_path / "out"
    assert farm(manifest, out, server) == 130
    assert "stopped by SIGINT with 3 left" in capsys.readouterr().out
    assert [r["id"] for r in read_records(out)] == ["job0"] and (out / "job0.png").is_file()
    assert farm(manifest, out, server) == 0
    assert len(server.prompts) == 4 and sorted(load_results(out)) == ids


def test_bad_jobs_are_recorded_and_the_others_finish(servers, tmp_path, capsys):
    first, second = servers("a"), servers("b")
    jobs = {"good1": {}, "bad": {}, "missing": {}, "odd": {"scheduler": "pndm"}, "good2": {}}
    jobs["garbled"] = {}
    manifest = write_manifest(tmp_path, jobs, {"bad": b"BAD source", "garbled": b"ODD"})
    (tmp_path / "missing-source.png").unlink()
    with manifest.open("a") as lines:
        lines.write("{not json\n")
    out = tmp_path / "out"
    assert farm(manifest, out, first, second) == headless.EXIT_SERVER_ERROR
    results = load_results(out)
    assert results["good1"]["error"] is None and results["good2"]["error"] is None
    assert "mask is empty" in results["bad"]["error"] and results["bad"]["stage"] == "edit"
    assert "cannot read" in results["missing"]["error"] and results["missing"]["stage"] == "load"
    assert "'pndm' has no ComfyUI sampler" in results["odd"]["error"]
    assert "unexpected KeyError" in results["garbled"]["error"]
    assert not any((out / f"{i}.png").exists() for i in ("bad", "missing", "odd", "garbled"))
    manifest_problems = [r for r in read_records(out) if r["stage"] == "manifest"]
    assert manifest_problems[0]["line"] == 7 and "not valid JSON" in manifest_problems[0]["error"]
    assert "2 done, 0 skipped, 4 failed, 1 manifest lines not run" in capsys.readouterr().out
    queued = len(first.prompts) + len(second.prompts)
    assert farm(manifest, out, first, second) == headless.EXIT_SERVER_ERROR  # the line is bad
    assert len(first.prompts) + len(second.prompts) == queued  # failed jobs not retried
    (tmp_path / "missing-source.png").write_bytes(b"found again")
    assert farm(manifest, out, first, second, extra=("--retry-failed",)) != 0
    assert load_results(out)["missing"]["error"] is None


def test_a_job_that_takes_every_server_down_is_failed_after_tries(servers, tmp_path, capsys):
    crash = {"crash": b"CRASH"}
    manifest = write_manifest(tmp_path, {"a0": {}, "crash": {}, "z9": {}}, crash)
    out = tmp_path / "out"
    pool = [servers(name, work=0.2) for name in ("s1", "s2", "s3")]
    assert farm(manifest, out, *pool, extra=("--tries", "2")) == headless.EXIT_SERVER_ERROR
    results = load_results(out)
    assert "went down 2 times" in results["crash"]["error"]
    assert results["a0"]["error"] is None and results["z9"]["error"] is None


def test_one_run_options_and_farm_options_do_not_mix(tmp_path, capsys):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("")
    code = headless.main(["--manifest", str(manifest), "--source", "x.png", "--quiet"])
    assert code == headless.EXIT_USAGE and "--source belongs to one workflow run" in (
        capsys.readouterr().err
    )
    one_run = [str(ROOT / "workflows/api/basic_exemplar_edit.json"), "--quiet"]
    code = headless.main([*one_run, "--server", "h:1", "--server", "h:2"])
    assert code == headless.EXIT_USAGE and "2 --server given" in capsys.readouterr().err
    assert headless.main([*one_run, "--per-server", "2"]) == headless.EXIT_USAGE
    assert "only applies with --manifest" in capsys.readouterr().err
    assert headless.main(["--quiet"]) == headless.EXIT_USAGE
    assert "give the workflow" in capsys.readouterr().err


def test_an_existing_output_fails_its_job_before_anything_is_uploaded(servers, tmp_path):
    server = servers("a")
    manifest = write_manifest(tmp_path, {"j1": {}, "j2": {}}, {})
    out = tmp_path / "out"
    out.mkdir()
    (out / "j1.png").write_bytes(b"the user's file")
    assert farm(manifest, out, server) == headless.EXIT_SERVER_ERROR
    results = load_results(out)
    assert "j1.png already exists in the --out folder" in results["j1"]["error"]
    assert "--overwrite" in results["j1"]["error"] and results["j1"]["stage"] == "write"
    assert not any(name.startswith("j1-") for name in server.uploads)  # never sent
    assert len(server.prompts) == 1 and results["j2"]["error"] is None
    assert (out / "j1.png").read_bytes() == b"the user's file"
    assert farm(manifest, out, server, extra=("--overwrite",)) == headless.EXIT_OK
    assert output_of(out, "j1")["source"] == "j1"


def test_a_job_whose_own_settings_changed_is_not_taken_as_done(servers, tmp_path):
    server = servers("a")
    manifest = write_manifest(tmp_path, {"j1": {"seed": 1}, "j2": {}}, {})
    out = tmp_path / "out"
    assert farm(manifest, out, server) == headless.EXIT_OK
    write_manifest(tmp_path, {"j1": {"seed": 2}, "j2": {}}, {})
    assert farm(manifest, out, server) == headless.EXIT_SERVER_ERROR
    results = load_results(out)
    assert "j1.png already exists" in results["j1"]["error"] and len(server.prompts) == 2
    assert output_of(out, "j1")["seed"] == 1  # the first run's output is kept
    assert farm(manifest, out, server, extra=("--overwrite",)) == headless.EXIT_OK
    assert output_of(out, "j1")["seed"] == 2
