"""The soak benchmark (``python -m bench.soak``) as a user runs it: it starts a real ComfyUI
(COMFYUI_PATH) as a user's install, runs a short mix of template, interrupted and bad prompts,
prints the counts and stops the server, also on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pbe_host

REPO = pbe_host.REPO_ROOT
BAD_KINDS = (
    "missing model",
    "mask of the wrong size",
    "NaN similarity",
    "unknown node class",
    "IMAGE linked into a MASK input",
)


def soak_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "bench.soak", *options]


def server_pid(output: str) -> int:
    return int(re.search(r"\(server pid (\d+)\)", output).group(1))


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_soak_counts_every_prompt_once_and_meets_the_target(tmp_path):
    report = tmp_path / "soak.json"
    # 12 prompts: 2, 4, ... 12 bad (every kind, the first again), 3 and 9 interrupted
    proc = subprocess.run(
        soak_command(
            "--prompts", "12", "--interrupt-every", "3", "--bad-every", "2", "--json", str(report)
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    counts = {
        name: int(count)
        for name, count in re.findall(r"^(\w[\w ]*?) {2,}(\d+)$", out, flags=re.MULTILINE)
    }
    assert counts.get("total") == 12, out + proc.stderr[-3000:]
    outcomes = ("succeeded", "interrupted", "failed as expected", "failed unexpectedly")
    assert sum(counts[name] for name in outcomes) == 12
    assert counts["interrupted"] == 2, out
    bad_line = next(line for line in out.splitlines() if line.startswith("bad prompts "))
    for kind in BAD_KINDS:
        assert re.search(rf"{kind} \d/{2 if kind == BAD_KINDS[0] else 1}\b", bad_line), bad_line
    assert "server alive at the end: yes" in out
    assert re.search(r"p50 \d+\.\d+ s, p95 \d+\.\d+ s", out), out
    assert re.search(r"server RSS: \d+\.\d MiB after prompt 6, \d+\.\d MiB at the end", out)
    figures = json.loads(report.read_text())
    assert figures["counts"] == {name: counts[name] for name in outcomes}
    assert [r["index"] for r in figures["results"]] == list(range(1, 13))
    assert not is_running(server_pid(out)), "the soak left its ComfyUI running"
    # the target: every bad prompt refused or failed with a message naming the problem
    assert counts["failed as expected"] == 6 and counts["failed unexpectedly"] == 0, out
    assert counts["succeeded"] == 4, out
    assert proc.returncode == 0 and "target: met" in out, out


def soak_servers() -> list[int]:
    """Process ids of running ComfyUIs whose base folder is a soak's scratch folder."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"--base-directory" in argv and any(b"pbe-soak-" in arg for arg in argv):
            found.append(int(entry))
    return found


def test_ctrl_c_while_comfyui_starts_still_stops_it():
    before = soak_servers()
    proc = subprocess.Popen(
        soak_command("--prompts", "5"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("starting ComfyUI"), first
        proc.send_signal(signal.SIGINT)  # mid start-up: the server is not answering yet
        rest = proc.communicate(timeout=180)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in rest, first + rest
    assert "soak: " not in rest, "the soak went on after Ctrl-C"
    pid = int(re.search(r"stopped the ComfyUI it started \(pid (\d+)\)", rest).group(1))
    deadline = time.monotonic() + 5
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_running(pid) and soak_servers() == before, "Ctrl-C left a ComfyUI running"
