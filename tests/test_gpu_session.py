"""bench/gpu_session.sh: every stage's command line (printed by --dry-run, for the GPU plan and
for --tiny) parses against the real options of the module it runs, the default plan fits one
device command, out-of-time and unknown stages are handled, and one real tiny stage runs end to
end on the CPU, leaving its report, log and session.jsonl in OUT."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_session.sh"
DEFAULT_PLAN = [
    "inference_same",
    "inference_same_compiled",
    "batch",
    "train_throughput",
    "train_checkpointing",
    "profile_edit",
    "mini_gpu",
]
OPTIONAL = ["profile_train", "nodes_interval", "mini_verdict"]


def _script(tmp_path: Path, *args: str, seconds: str | None = None, timeout: int = 60):
    out = tmp_path / "out"
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path / "tmp"),
        "PBE_MINI_OUT": str(tmp_path / "mini"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("COMFYUI_PATH", None)
    if seconds is not None:
        env["PBE_SESSION_SECONDS"] = seconds
    done = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, out


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "session.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["stage"]: r for r in map(json.loads, lines)}


class _Parsed(Exception):
    pass


def _commands(tmp_path: Path, *args: str) -> dict[str, list[str]]:
    done, out = _script(tmp_path, "--dry-run", *args)
    assert done.returncode == 0, done.stderr
    assert not out.exists()  # a dry run writes nothing
    commands = {}
    for line in done.stdout.splitlines():
        stage, _, command = line.partition(": ")
        commands[stage] = command if command.startswith("skipped") else shlex.split(command)
    return commands


@pytest.mark.parametrize("tiny", [False, True], ids=["gpu", "tiny"])
def test_each_stage_command_parses_against_its_modules_own_options(tmp_path, monkeypatch, tiny):
    """Option names that drift from a module's argparse options fail here, not on the GPU."""
    commands = _commands(tmp_path, *(["--tiny"] if tiny else []), *DEFAULT_PLAN, *OPTIONAL)
    parsed = []
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)  # exits 2 on an unknown or malformed option
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for stage, argv in commands.items():
        if isinstance(argv, str):  # skipped in this mode, with its reason
            assert tiny and "tiny" in argv, (stage, argv)
            continue
        assert argv[:2] == [sys.executable, "-m"], argv
        module = importlib.import_module(argv[2])
        with pytest.raises(_Parsed):
            module.main(argv[3:])
        parsed.append(stage)
    expected = DEFAULT_PLAN + OPTIONAL
    if tiny:
        skipped = {"inference_same", "inference_same_compiled", "profile_edit", "nodes_interval"}
        expected = [s for s in expected if s not in skipped]
    assert parsed == expected
    if not tiny:
        compiled = commands["inference_same_compiled"]  # the editor alone, compiled
        assert compiled[compiled.index("--sides") + 1] == "editor"
        assert compiled[compiled.index("--compile") + 1] == "cudagraphs"


def test_the_default_plan_fits_one_device_command(tmp_path):
    commands = _commands(tmp_path)
    assert list(commands) == DEFAULT_PLAN  # most important first, the model last
    text = SCRIPT.read_text(encoding="utf-8")
    budgets = dict(re.findall(r'\[(\w+)\]="(\d+ \d+)"', text))
    session = int(re.search(r"PBE_SESSION_SECONDS:-(\d+)", text).group(1))
    assert session <= 540  # a device command is at most 600 s; the set-up needs the rest
    before_model = sum(int(budgets[s].split()[1]) for s in DEFAULT_PLAN[:-1])
    assert before_model <= session  # the benchmarks alone never run past the session
    assert int(budgets["mini_gpu"].split()[1]) <= 240  # the optional second command's length


def test_one_tiny_stage_leaves_its_report_log_and_session_record(tmp_path):
    done, out = _script(tmp_path, "--tiny", "profile_train", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = _records(out)
    assert list(records) == ["profile_train"]
    assert records["profile_train"]["status"] == "ok", (out / "profile_train.log").read_text()
    assert json.loads((out / "profile_train.json").read_text())
    assert (out / "imports.log").read_text().startswith("imports: all present")
    assert json.loads((out / "machine.json").read_text())["torch"]
    assert not (REPO / ".venv-gpu").exists()  # no environment made, nothing installed


def test_a_session_out_of_time_skips_the_stages_it_cannot_start(tmp_path):
    done, out = _script(tmp_path, "--tiny", "train_throughput", "mini_gpu", seconds="0")
    assert done.returncode == 0, done.stderr[-2000:]
    records = _records(out)
    assert list(records) == ["train_throughput", "mini_gpu"]
    for record in records.values():
        assert record["status"] == "skipped" and "of the session left" in record["reason"]
    assert not (out / "train_throughput.json").exists()


def test_unknown_stages_and_options_are_refused_before_any_work(tmp_path):
    for args in (["nonsense"], ["--fast"]):
        done, out = _script(tmp_path, *args)
        assert done.returncode == 2
        assert "error: unknown" in done.stderr
        assert not (out / "session.jsonl").exists()
