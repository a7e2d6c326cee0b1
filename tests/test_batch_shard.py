"""The batch editor as separate processes: two processes under ``accelerate launch`` on the CPU
share a manifest (every job once, the same pixels as one process), and a run killed with
SIGKILL resumes without redoing or corrupting what it had finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from batch_support import FAST, MODEL, REPO, make_inputs, pixels, records, write_jsonl
from ports import free_port

from exemplar_core.cli import main

pytestmark = pytest.mark.slow


def _env(tmp_path) -> dict[str, str]:
    # Loopback only, one thread per process, and no accelerate config of the machine's user.
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "GLOO_SOCKET_IFNAME": "lo",
        "HF_HOME": str(tmp_path / "hf"),
    }


def _batch_args(manifest, out) -> list[str]:
    return [
        "batch",
        str(manifest),
        "--checkpoint",
        str(MODEL),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--no-progress",
        *FAST,
    ]


def test_two_processes_do_every_job_once_with_the_pixels_of_one(tmp_path):
    manifest = write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, 3))
    one, two = tmp_path / "one", tmp_path / "two"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # torchrun's launcher; on a machine without a GPU the processes use the CPU
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        "-m",
        "exemplar_core",
        *_batch_args(manifest, two),
    ]
    launched = subprocess.run(
        command,
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert "batch rank 0/2: 2 done" in launched.stdout
    assert "batch rank 1/2: 1 done" in launched.stdout
    assert main(_batch_args(manifest, one)) == 0

    shared = records(two)
    assert Counter(entry["id"] for entry in shared) == Counter(f"j{i:02d}" for i in range(3))
    assert {entry["worker"] for entry in shared} == {0, 1}
    assert sorted(p.name for p in two.glob("results*.jsonl")) == [
        "results.rank0.jsonl",
        "results.rank1.jsonl",
    ]
    for i in range(3):
        name = f"j{i:02d}.png"
        assert (pixels(two / name) == pixels(one / name)).all(), name
    # resuming the sharded folder with one process finds everything done
    assert main(_batch_args(manifest, two)) == 0
    assert len(records(two)) == 3


def test_a_killed_run_resumes_without_redoing_or_corrupting_finished_jobs(tmp_path):
    count = 4
    manifest = write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, count))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "exemplar_core", *_batch_args(manifest, out)],
        cwd=REPO,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("j*.png")) and process.poll() is None:
            assert time.monotonic() < deadline, "no output appeared in time"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = {
        path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.glob("j*.png")
    }
    assert 1 <= len(finished) < count
    recorded = {entry["output"] for entry in records(out) if entry["error"] is None}
    assert set(finished) <= recorded  # an output never exists without its record
    for name in finished:
        assert pixels(out / name).shape == (48, 64, 3)  # whole PNGs, not partial files

    assert main(_batch_args(manifest, out)) == 0
    again = {
        name: ((out / name).stat().st_mtime_ns, (out / name).read_bytes()) for name in finished
    }
    assert again == finished
    successes = Counter(entry["id"] for entry in records(out) if entry["error"] is None)
    assert set(successes) == {f"j{i:02d}" for i in range(count)}
    # a job finished before the kill is not done again (one killed between its record and its
    # rename has no output and is redone)
    assert all(successes[name.removesuffix(".png")] == 1 for name in finished)
    assert not list(out.glob(".*.tmp"))
