"""Two CPU processes (gloo) through accelerate: the ranks see different data, same weights."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import free_port
from train_support import make_images, tiny_config, write_jsonl

from train.config import to_toml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _start(tmp_path, config, *args: str) -> subprocess.Popen:
    """Start ``python -m train ARGS`` on 2 CPU processes (gloo) in a process group of its own (a
    stuck run is killed with all its workers). The output of both ranks and the launcher goes
    to ``tmp_path / "launch.log"``."""
    config_file = tmp_path / "config.toml"
    config_file.write_text(to_toml(config))
    # Loopback only: gloo otherwise binds the interface the host name resolves to.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "GLOO_SOCKET_IFNAME": "lo",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "train",
        "--config",
        str(config_file),
        *args,
    ]
    with (tmp_path / "launch.log").open("w") as handle:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _launch(tmp_path, config, *args: str, returncode: int = 0) -> dict:
    """Run ``python -m train ARGS`` on 2 CPU processes (``_start``) and wait; return
    summary.json ({} when the run is expected to fail with ``returncode``)."""
    process = _start(tmp_path, config, *args)
    log = tmp_path / "launch.log"
    try:
        process.wait(timeout=240)
    except subprocess.TimeoutExpired:
        stuck = subprocess.run(
            ["ps", "-o", "pid,ppid,stat,wchan:20,args", "-g", str(process.pid)],
            capture_output=True,
            text=True,
        ).stdout
        os.killpg(process.pid, signal.SIGKILL)
        (tmp_path / "stuck.txt").write_text(stuck)
        process.wait()
        pytest.fail(
            f"the 2-process run did not finish in 240 s:\n{stuck}\n{log.read_text()[-3000:]}"
        )
    output = log.read_text()
    assert process.returncode == returncode, output[-3000:]
    if returncode:
        return {}
    return json.loads((Path(config.out_dir) / "summary.json").read_text())


def test_two_processes_end_with_identical_weights(tmp_path):
    """Started as the resume of a run stopped before its first checkpoint: the warning that it
    starts from step 0 comes once, from the main process, not from every rank."""
    data = write_jsonl(tmp_path / "ann.jsonl", make_images(tmp_path, 9))
    config = tiny_config(tmp_path / "run", data, train={"max_steps": 2, "validate_every": 0})
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    summary = _launch(tmp_path, config, "--resume")
    assert (tmp_path / "launch.log").read_text().count("has no checkpoint yet") == 1
    assert summary["world_size"] == 2 and summary["step"] == 2
    first, second = summary["rank_checksums"]
    assert first == second  # bit-identical trained weights on both ranks
    data_a, data_b = summary["rank_data_checksums"]
    assert data_a != data_b  # each rank trained on its own shard
    assert summary["samples"] == 2 * 2 * 2  # steps x batch x processes


def test_a_resume_error_is_printed_once_not_by_every_rank(tmp_path):
    data = write_jsonl(tmp_path / "ann.jsonl", make_images(tmp_path, 9))
    config = tiny_config(tmp_path / "run", data, train={"max_steps": 2, "validate_every": 0})
    (tmp_path / "run" / "checkpoints" / "step-00000001").mkdir(parents=True)  # not complete
    _launch(tmp_path, config, "--resume", returncode=1)  # torchrun's code for failed workers
    output = (tmp_path / "launch.log").read_text()
    assert re.search(r"exitcode\s*:\s*2", output)  # the workers' own: a usage error
    assert output.count("error: --resume: no complete checkpoint in") == 1, output[-3000:]


def test_two_processes_share_prior_generation_in_subject_mode(tmp_path):
    from PIL import Image

    from train.config import config_from_dict

    subject = write_jsonl(tmp_path / "subject.jsonl", make_images(tmp_path, 3, seed=5))
    (tmp_path / "class").mkdir()
    Image.new("RGB", (40, 30), (200, 40, 30)).save(tmp_path / "class" / "dog.png")
    base = tiny_config(tmp_path / "run", subject, train={"max_steps": 1, "val_steps": 1})
    data = base.to_dict()
    data["subject"].update(
        enabled=True,
        path=str(subject),
        repeats=2,
        num_prior=5,
        prior_steps=1,
        class_exemplars=str(tmp_path / "class"),
    )
    summary = _launch(tmp_path, config_from_dict(data))
    prior = tmp_path / "run" / "prior"
    rank0 = (prior / "prior-rank0.jsonl").read_text().splitlines()
    rank1 = (prior / "prior-rank1.jsonl").read_text().splitlines()
    assert (len(rank0), len(rank1)) == (3, 2)  # 5 samples split across the ranks
    assert summary["ranks_in_sync"] and summary["samples"] == 1 * (2 + 2) * 2


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def test_sigterm_to_one_rank_stops_both_after_the_same_step_with_a_checkpoint(tmp_path):
    """SIGTERM reaches rank 1 only; rank 0 learns of it through the per-step agreement, both
    finish the same step, write one complete checkpoint together and exit with 143."""
    from train import checkpoints

    data = write_jsonl(tmp_path / "ann.jsonl", make_images(tmp_path, 9))
    out = tmp_path / "run"
    options = {"max_steps": 200, "checkpoint_every": 1000, "validate_every": 0}
    process = _start(tmp_path, tiny_config(out, data, train=options))
    log = tmp_path / "launch.log"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            text = (out / "train.log").read_text() if (out / "train.log").is_file() else ""
            if "step 2 loss" in text:
                break
            time.sleep(0.05)
        workers = {_rank_of(pid): pid for pid in _children(process.pid)}
        assert set(workers) == {0, 1}, (workers, log.read_text()[-3000:])
        os.kill(workers[1], signal.SIGTERM)
        process.wait(timeout=180)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    output = log.read_text()
    assert process.returncode != 0, output[-3000:]
    stopped = re.search(
        r"stopped by SIGTERM at step (\d+): checkpoint (step-\d+) is complete", output
    )
    assert stopped, output[-3000:]
    assert re.search(r"exitcode\s*:\s*143", output)  # torchrun reports the workers' code
    assert "accelerate launch --num_processes 2 -m train --config" in output
    root = out / "checkpoints"
    assert checkpoints.read_latest(root) == stopped.group(2)
    assert checkpoints.problem(root / stopped.group(2)) is None
    manifest = json.loads((root / stopped.group(2) / "manifest.json").read_text())
    assert {"rng-0.pt", "rng-1.pt"} <= set(manifest["files"])  # both ranks saved that step
    state = json.loads((root / stopped.group(2) / "state.json").read_text())
    assert state["step"] == int(stopped.group(1)) < 200
