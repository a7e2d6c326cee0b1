"""Faults during training: kills at any moment, stop signals, a full disk, corrupt checkpoints,
read-only folders, missing packages and bad input. Each outcome is what docs/training.md
("Stopping and resuming") promises."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from permissions import bound_by_permissions
from train_support import assert_same_weights, checkpoint_weights, tiny_config

from train import checkpoints
from train.__main__ import main as train_main
from train.config import to_toml
from train.trainer import ResumeError, Trainer, TrainingError, train

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# One checkpoint per step: most moments of a run are inside a save or right next to one.
RUN = {"max_steps": 8, "checkpoint_every": 1, "keep_checkpoints": 20, "validate_every": 0}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted run every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("reference")
    train(tiny_config(out, data, train=RUN))
    return out


def _assert_latest_is_complete(out: Path) -> str | None:
    root = out / "checkpoints"
    named = checkpoints.read_latest(root)
    if named is not None:
        assert checkpoints.problem(root / named) is None, named
    return named


def _env(**extra) -> dict:
    # As many threads as this process uses, so that runs here and there are bit-identical.
    threads = str(torch.get_num_threads())
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": threads, **extra}


def _python(*args, env: dict | None = None, timeout: float = 240, **options):
    """``python *args`` run from the repository root with ``_env()``; output captured as text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **options,
    )


def _config_file(folder: Path, config) -> Path:
    path = folder / "config.toml"
    path.write_text(to_toml(config))
    return path


def _wait_for_log(out: Path, pattern: str, process, seconds: float = 120):
    """Wait until train.log matches ``pattern``."""
    log = out / "train.log"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and re.search(pattern, log.read_text()):
            return
        time.sleep(0.02)
    raise AssertionError(f"{pattern!r} never reached train.log (rc {process.poll()})")


# A driver that runs `python -m train`'s main with a SIGKILL planted at one moment of a save, or
# ("time:SECONDS") that many seconds after the run's first logged step.
KILLER = """
import os, re, shutil, signal, sys, threading
from pathlib import Path
import train.checkpoints as checkpoints
import train.trainer as trainer

point, nth = os.environ["KILL_AT"].split(":")
calls = [0]

def hit():
    calls[0] += 1
    if calls[0] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)

def wrap(owner, name, when):
    real = getattr(owner, name)
    def patched(*args, **kwargs):
        if when(*args):
            hit()
        return real(*args, **kwargs)
    setattr(owner, name, patched)

if point == "manifest":  # files written, manifest half-computed
    wrap(checkpoints, "_sha256", lambda path: True)
elif point == "rename":  # sealed, not yet moved into place
    wrap(Path, "rename", lambda src, dst: Path(src).name.startswith(".tmp-step"))
elif point == "latest":  # moved into place, latest not yet updated
    wrap(checkpoints, "atomic_write_text", lambda path, text: Path(path).name == "latest")
elif point == "export":  # model export written to its temporary file
    wrap(os, "replace", lambda src, dst: str(dst).endswith(".safetensors"))
elif point == "prune":  # an old checkpoint being deleted
    wrap(shutil, "rmtree", lambda path, *a: re.match(r"step-\\d{8}$", Path(path).name))
elif point == "time":  # a moment no save chooses, timed inside the run (not by a busy test)
    timer = threading.Timer(float(nth), os.kill, (os.getpid(), signal.SIGKILL))
    real_log = trainer.Trainer._log_scalars
    def log_and_arm(self, *args):
        if timer.ident is None:
            timer.start()
        return real_log(self, *args)
    trainer.Trainer._log_scalars = log_and_arm

from train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_at_any_moment_resumes_to_the_uninterrupted_weights(tmp_path, data, reference):
    """Six SIGKILLs (five planted inside saves, one at a seeded random time after the first
    logged step), each followed by --resume: `latest` always names a complete checkpoint and the
    end equals an uninterrupted run bit for bit. (The kills after the random one need 4 more
    steps: 8 steps leave room.)"""
    out = tmp_path / "run"
    config = _config_file(tmp_path, tiny_config(out, data, train={**RUN, "keep_checkpoints": 2}))
    driver = tmp_path / "killer.py"
    driver.write_text(KILLER)
    rng = random.Random(16)
    kills = [
        "manifest:2",
        f"time:{rng.uniform(0.0, 0.3)}",
        "rename:2",
        "latest:1",
        "export:1",
        "prune:1",
    ]
    for number, kill in enumerate(kills):
        args = ["--config", str(config)] + (["--resume"] if number else [])
        result = _python(str(driver), *args, env=_env(KILL_AT=kill))
        assert result.returncode == -signal.SIGKILL, (kill, result.stderr[-2000:])
        _assert_latest_is_complete(out)
    done = _python("-m", "train", "--config", str(config), "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert checkpoints.read_latest(out / "checkpoints") == "step-00000008"
    assert_same_weights(checkpoint_weights(out, 8), checkpoint_weights(reference, 8))
    assert not list((out / "checkpoints").glob(".tmp-*")) and not list(
        (out / "checkpoints").glob(".old-*")
    )


def test_resuming_a_finished_run_rewrites_no_checkpoint(tmp_path, data):
    config = tiny_config(tmp_path, data, train={"max_steps": 1, "validate_every": 0})
    train(config)
    last = tmp_path / "checkpoints" / "step-00000001"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in last.iterdir()}
    folder = last.stat().st_ino
    summary = train(config, resume=True)
    assert summary["step"] == 1
    assert last.stat().st_ino == folder
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in last.iterdir()} == before


def _sealed(folder: Path, step: int) -> Path:
    """A small complete checkpoint folder (placeholder files, a real manifest)."""
    folder.mkdir(parents=True)
    for name in checkpoints.REQUIRED + ("rng-0.pt",):
        (folder / name).write_text(f"{name} {step}")
    checkpoints.seal(folder, step)
    return folder


def test_latest_never_names_a_missing_checkpoint_while_one_is_replaced(tmp_path, monkeypatch):
    """Publishing step 4 over a corrupt step-4 that `latest` names: at every rename and pointer
    write on the way, `latest` names a complete checkpoint."""
    root = tmp_path / "checkpoints"
    _sealed(root / "step-00000002", 2)
    _sealed(root / "step-00000004", 4)
    (root / "step-00000004" / "optimizer.pt").write_text("bit rot")
    (root / "latest").write_text("step-00000004")
    _sealed(root / ".tmp-step-00000004", 4)
    seen = []

    def check():
        named = checkpoints.read_latest(root)
        seen.append(named)
        assert named is None or checkpoints.problem(root / named) is None, named

    def rename(self, target):
        check()
        result = real_rename(self, target)
        check()
        return result

    def pointer(path, text):
        real_text(path, text)
        check()  # the first pointer write must already cure the corrupt `latest`

    real_rename, real_text = Path.rename, checkpoints.atomic_write_text
    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(checkpoints, "atomic_write_text", pointer)
    checkpoints.publish(root, root / ".tmp-step-00000004", "step-00000004")
    assert seen[0] == "step-00000002" and seen[-1] == "step-00000004"
    assert len(seen) == 6  # the pointer moved away, two renames checked on both sides, moved back
    assert (root / "step-00000004" / "optimizer.pt").read_text() == "optimizer.pt 4"


# `python -m train`'s main, holding still after logging step PAUSE_AT until a stop signal came:
# the test signals once it has read that step in train.log, and the run cannot finish first.
PAUSER = """
import os, sys, time
import train.trainer as trainer

real_log, pause_at = trainer.Trainer._log_scalars, int(os.environ["PAUSE_AT"])

def log_then_wait(self, *args):
    real_log(self, *args)
    deadline = time.monotonic() + 120
    while self.step == pause_at and not self.stop.requested and time.monotonic() < deadline:
        time.sleep(0.01)

trainer.Trainer._log_scalars = log_then_wait
from train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_replacing_the_checkpoint_latest_names_verifies_only_the_newest_other(
    tmp_path, monkeypatch
):
    """While step 6 is replaced, `latest` moves to the newest complete checkpoint (step 4):
    the older ones are not read and hashed on the way."""
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        _sealed(root / checkpoints.checkpoint_name(step), step)
    (root / "latest").write_text("step-00000006")
    _sealed(root / ".tmp-step-00000006", 6)
    checked = []
    real_problem = checkpoints.problem
    monkeypatch.setattr(
        checkpoints, "problem", lambda folder: checked.append(folder.name) or real_problem(folder)
    )
    checkpoints.publish(root, root / ".tmp-step-00000006", "step-00000006")
    assert checked == ["step-00000004"]
    assert checkpoints.read_latest(root) == "step-00000006"


def test_sigint_saves_says_how_to_resume_and_exits_130(tmp_path, data):
    out = tmp_path / "run"
    options = {"max_steps": 6, "checkpoint_every": 1000, "validate_every": 0}
    config = _config_file(tmp_path, tiny_config(out, data, train=options))
    driver = tmp_path / "pauser.py"
    driver.write_text(PAUSER)
    process = subprocess.Popen(
        [sys.executable, str(driver), "--config", str(config)],
        cwd=REPO,
        env=_env(PAUSE_AT="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_log(out, r"step 2 loss", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    stopped = re.search(r"stopped by SIGINT at step 2: checkpoint (step-\d+) is complete", stderr)
    assert stopped, stderr[-2000:]
    assert checkpoints.read_latest(out / "checkpoints") == stopped.group(1) == "step-00000002"
    _assert_latest_is_complete(out)
    resume = f"python -m train --config {config} --resume"
    assert resume in stderr
    again = _python(*resume.split()[1:])
    assert again.returncode == 0, again.stderr[-2000:]
    assert (
        f"resumed from {out / 'checkpoints' / stopped.group(1)}" in (out / "train.log").read_text()
    )
    assert json.loads((out / "summary.json").read_text())["step"] == 6


SIGNALS = """
import os, signal, sys, time
from train.signals import StopSignals

with StopSignals(grace=float(sys.argv[1])) as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested == signal.SIGTERM
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)
    print("still running", stop.requested)
"""


@pytest.mark.parametrize("grace", [0.0, 30.0])
def test_a_second_signal_stops_at_once_unless_it_repeats_the_first(tmp_path, grace):
    result = _python("-c", SIGNALS, str(grace), timeout=60)
    assert "SIGTERM received: finishing the current step" in result.stderr
    if grace == 0.0:  # a real second signal: the default action, at once
        assert result.returncode == -signal.SIGTERM and "still running" not in result.stdout
        assert "received again: stopping at once" in result.stderr
    else:  # the same request forwarded by a launcher: still one stop
        assert result.returncode == 0 and "still running 15" in result.stdout


def test_full_disk_during_a_checkpoint_keeps_the_previous_one_as_latest(tmp_path, data):
    """A file-size limit makes the step-2 save fail like a full disk (EFBIG, as ENOSPC)."""
    import resource

    out = tmp_path / "run"
    options = {"max_steps": 1, "checkpoint_every": 1, "validate_every": 0}
    train(tiny_config(out, data, train=options))
    optimizer = (out / "checkpoints" / "step-00000001" / "optimizer.pt").stat().st_size
    trainable = (out / "checkpoints" / "step-00000001" / "trainable.safetensors").stat().st_size
    config = _config_file(tmp_path, tiny_config(out, data, train={**options, "max_steps": 2}))

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of the process
        limit = (trainable + optimizer) // 2
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = _python("-m", "train", "--config", str(config), "--resume", preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "could not write checkpoint step-00000002 at step 2" in result.stderr
    assert "File too large" in result.stderr
    assert "checkpoints/latest still names step-00000001" in result.stderr
    assert _assert_latest_is_complete(out) == "step-00000001"
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the partial save freed its space


def test_a_failed_export_says_so_and_keeps_a_complete_latest(tmp_path, data, monkeypatch):
    def no_space(self, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(Trainer, "export", no_space)
    config = tiny_config(tmp_path, data, train={"max_steps": 4, "checkpoint_every": 2})
    with pytest.raises(TrainingError, match=r"models/pbe-step-00000002.safetensors.*No space"):
        train(config)
    assert _assert_latest_is_complete(tmp_path) == "step-00000002"


def test_a_corrupt_checkpoint_is_detected_on_resume_and_the_previous_one_used(
    tmp_path, data, reference
):
    out = tmp_path / "run"
    options = {**RUN, "max_steps": 2}
    train(tiny_config(out, data, train=options))
    damaged = out / "checkpoints" / "step-00000002" / "trainable.safetensors"
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit, same size
    damaged.write_bytes(bytes(raw))
    logs = []
    import logging

    handler = logging.Handler()
    handler.emit = lambda record: logs.append(record.getMessage())
    logging.getLogger("train").addHandler(handler)
    try:
        summary = train(tiny_config(out, data, train={**options, "max_steps": 3}), resume=True)
    finally:
        logging.getLogger("train").removeHandler(handler)
    assert any(
        "step-00000002 (named by latest): trainable.safetensors changed after it was written"
        in line
        for line in logs
    ), logs
    assert any("resumed from" in line and "step-00000001" in line for line in logs), logs
    assert summary["step"] == 3
    assert_same_weights(checkpoint_weights(out, 3), checkpoint_weights(reference, 3))


def test_resume_with_only_corrupt_checkpoints_fails_instead_of_starting_over(
    tmp_path, data, capsys
):
    config = tiny_config(tmp_path, data, train={"max_steps": 2, "checkpoint_every": 2})
    train(config)
    (tmp_path / "checkpoints" / "step-00000002" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(ResumeError, match=r"no complete checkpoint.*optimizer.pt has 0 bytes"):
        train(config, resume=True)
    assert not (tmp_path / "checkpoints" / "step-00000001").exists()
    capsys.readouterr()
    # the command line says it once (one process is the main one; see test_train_ddp for two)
    assert train_main(["--config", str(_config_file(tmp_path, config)), "--resume"]) == 2
    assert capsys.readouterr().err.count("error: --resume: no complete checkpoint in") == 1


def test_files_follow_the_umask(tmp_path, data, umask):
    """umask 022: 0644 files and 0755 folders (the model exports are written by exemplar_core's
    writer, whose own tests cover them)."""
    umask(0o022)
    train(tiny_config(tmp_path, data, train={"max_steps": 1, "validate_every": 0}))
    paths = [p for p in tmp_path.rglob("*") if "models" not in p.relative_to(tmp_path).parts]
    assert any(p.name == "trainable.safetensors" for p in paths)
    for path in paths:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_a_read_only_out_dir_is_reported_before_any_work(tmp_path, data):
    """A folder the user may not write to (also for root: see tests/permissions.py)."""
    read_only = tmp_path / "out"
    read_only.mkdir()
    config = _config_file(tmp_path, tiny_config(read_only / "run", data))
    os.chmod(read_only, 0o555)
    try:
        result = _python("-m", "train", "--config", str(config), preexec_fn=bound_by_permissions())
    finally:
        os.chmod(read_only, 0o755)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"out_dir {read_only / 'run'} cannot be written (Permission denied)" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(read_only.iterdir()) == []


# A shim that makes `import accelerate` fail, as on an install without the training extra.
HIDE_PACKAGE = """
import sys

class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == {name!r} or name.startswith({name!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, _Hide())
"""


@pytest.mark.parametrize(
    ("command", "package"),
    [
        (["-m", "train", "--config", "{config}"], "accelerate"),
        (["-m", "train.mini", "--out", "{out}"], "accelerate"),
        (["-m", "bench.train", "throughput", "--out", "{out}/report.json"], "accelerate"),
        (["-m", "train", "--config", "{config}"], "peft"),
    ],
    ids=["train", "train.mini", "bench.train", "train-peft"],
)
def test_a_missing_training_extra_is_named_before_any_work(tmp_path, data, command, package):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(HIDE_PACKAGE.format(name=package))
    out = tmp_path / "out"
    config = _config_file(tmp_path, tiny_config(out, data))
    args = [a.format(config=config, out=out) for a in command]
    result = _python(*args, timeout=120, env=_env(PYTHONPATH=f"{shim}{os.pathsep}{REPO}"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert package in result.stderr and 'pip install -e ".[train]"' in result.stderr
    assert not out.exists()  # no folder made, no stage run


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"train": {"lr": -1.0}}, r"config.toml:\d+: train.lr must be > 0, got -1.0"),
        ({"train": {"batch_size": 0}}, r"config.toml:\d+: train.batch_size must be >= 1, got 0"),
        ({"train": {"max_steps": -3}}, r"set train.max_steps > 0"),
        ({"train": {"max_stpes": 3}}, r"unknown option\(s\) train.max_stpes; known \[train\]"),
        ({"data": {"path": "missing.jsonl"}}, r"annotation file .*missing.jsonl does not exist"),
    ],
    ids=["negative-lr", "zero-batch", "negative-steps", "unknown-key", "missing-data"],
)
def test_bad_input_gets_a_message_and_exit_code_2(tmp_path, data, capsys, change, expected):
    config = tiny_config(tmp_path / "run", data).to_dict()
    for section, values in change.items():
        config[section].update(values)
    path = tmp_path / "config.toml"
    lines = []
    for section in ("model", "data", "train"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in config[section].items() if v is not None]
    path.write_text(f'out_dir = "{tmp_path / "run"}"\n' + "\n".join(lines) + "\n")
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert "Traceback" not in err


def test_malformed_toml_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('out_dir = "x"\n[train]\nlr = = 1\n')
    assert train_main(["--config", str(path)]) == 2
    assert re.search(
        rf"{re.escape(str(path))} is not valid TOML: .*line 3", capsys.readouterr().err
    )


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path, data, capsys):
    config = _config_file(tmp_path, tiny_config(tmp_path / "nothing-here", data))
    assert train_main(["--config", str(config), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: out_dir" in err and "does not exist" in err and "leave out --resume" in err
    assert not (tmp_path / "nothing-here").exists()


def test_a_new_run_never_overwrites_another_runs_checkpoints(tmp_path, data, capsys):
    config = tiny_config(tmp_path / "run", data, train={"max_steps": 1})
    train(config)
    before = (tmp_path / "run" / "checkpoints" / "step-00000001" / "manifest.json").read_text()
    assert train_main(["--config", str(_config_file(tmp_path, config))]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    after = (tmp_path / "run" / "checkpoints" / "step-00000001" / "manifest.json").read_text()
    assert after == before


def test_a_signal_the_shell_ignores_stays_ignored():
    """Background jobs of a script start with SIGINT ignored; the trainer must not take it over."""
    from train.signals import StopSignals

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals(announce=False) as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
