"""The batch editor as separate processes: two processes under ``accelerate launch`` on the CPU
share a manifest (every job once, the same pixels as one process), and a run killed with
SIGKILL resumes without redoing or corrupting what it had finished. One test, the killed run
beside the launched pair, so that the fresh processes (each a model load) are as few as can
prove it."""

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


def _launch_two(manifest, out, tmp_path) -> subprocess.Popen:
    """``accelerate launch`` of two CPU processes running the batch into ``out``."""
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
        *_batch_args(manifest, out),
    ]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_until_first_output_then_kill(manifest, out, tmp_path) -> None:
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


def test_two_processes_do_every_job_once_and_a_killed_run_resumes_to_the_same_pixels(tmp_path):
    """The two processes of ``accelerate launch`` share the jobs, each done once; meanwhile one
    process is killed with SIGKILL after its first output and run again: it redoes nothing it
    had finished, leaves no partial file, and ends with the two processes' pixels."""
    count = 4
    manifest = write_jsonl(tmp_path / "jobs.jsonl", make_inputs(tmp_path, count))
    one, two = tmp_path / "one", tmp_path / "two"
    ids = [f"j{i:02d}" for i in range(count)]
    launched = _launch_two(manifest, two, tmp_path)  # runs while the other is killed
    try:
        _run_until_first_output_then_kill(manifest, one, tmp_path)
        stdout, stderr = launched.communicate(timeout=300)
    finally:
        launched.kill()
    assert launched.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "batch rank 0/2: 2 done" in stdout and "batch rank 1/2: 2 done" in stdout
    shared = records(two)
    assert Counter(entry["id"] for entry in shared) == Counter(ids)
    assert {entry["worker"] for entry in shared} == {0, 1}
    assert sorted(p.name for p in two.glob("results*.jsonl")) == [
        "results.rank0.jsonl",
        "results.rank1.jsonl",
    ]

    finished = {
        path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in one.glob("j*.png")
    }
    assert 1 <= len(finished) < count
    recorded = {entry["output"] for entry in records(one) if entry["error"] is None}
    assert set(finished) <= recorded  # an output never exists without its record
    for name in finished:
        assert pixels(one / name).shape == (48, 64, 3)  # whole PNGs, not partial files
    assert main(_batch_args(manifest, one)) == 0
    again = {
        name: ((one / name).stat().st_mtime_ns, (one / name).read_bytes()) for name in finished
    }
    assert again == finished
    successes = Counter(entry["id"] for entry in records(one) if entry["error"] is None)
    assert set(successes) == set(ids)
    # a job finished before the kill is not done again (one killed between its record and its
    # rename has no output and is redone)
    assert all(successes[name.removesuffix(".png")] == 1 for name in finished)
    assert not list(one.glob(".*.tmp"))
    for job_id in ids:  # one process, killed and resumed, made the two processes' pixels
        assert (pixels(two / f"{job_id}.png") == pixels(one / f"{job_id}.png")).all(), job_id
    # resuming the sharded folder with one process finds everything done
    assert main(_batch_args(manifest, two)) == 0
    assert len(records(two)) == count
