"""bench/gpu_session.sh --tiny: every stage runs (or is skipped with its reason) on the CPU with
this interpreter, installs nothing, and leaves each stage's report and log in OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_session.sh"
# The stages that run at tiny sizes on a CPU, and the report each leaves.
RUN_TINY = {
    "train_throughput": "train_throughput.json",
    "train_checkpointing": "train_checkpointing.json",
    "profile_train": "profile_train.json",
    "mini_gpu": "mini_gpu/pbe-final.safetensors",
    "mini_verdict": "mini_verdict/verdict.json",
}
# SD-sized or ComfyUI-only stages: skipped in tiny mode unless PBE_TINY_SD=1.
SKIPPED_TINY = ("inference_same", "inference_same_compiled", "profile_edit", "nodes_interval")


def _session(
    tmp_path: Path, *args: str, seconds: str | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path / "tmp"),  # bench.train's scenes
        "PBE_MINI_OUT": str(tmp_path / "mini"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("COMFYUI_PATH", None)
    if seconds is not None:
        env["PBE_SESSION_SECONDS"] = seconds
    done = subprocess.run(
        ["bash", str(SCRIPT), "--tiny", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    return done, out


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "session.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["stage"]: r for r in map(json.loads, lines)}


@pytest.mark.slow
def test_tiny_session_runs_every_stage_and_leaves_each_report(tmp_path):
    done, out = _session(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    records = _records(out)
    assert list(records) == [  # most important first, each recorded once
        "inference_same",
        "inference_same_compiled",
        "train_throughput",
        "batch",
        "train_checkpointing",
        "profile_edit",
        "profile_train",
        "nodes_interval",
        "mini_gpu",
        "mini_verdict",
    ]
    for stage, report in RUN_TINY.items():
        assert records[stage]["status"] == "ok", (out / f"{stage}.log").read_text()[-3000:]
        assert (out / report).is_file(), stage
        assert (out / f"{stage}.log").is_file()
    for stage in SKIPPED_TINY:
        assert records[stage]["status"] == "skipped" and records[stage]["reason"]
    # bench.batch (issue 20's editor branch) runs where it exists, else says why not
    assert records["batch"]["status"] in ("ok", "skipped")
    if records["batch"]["status"] == "ok":
        assert (out / "batch.json").is_file()
    throughput = json.loads((out / "train_throughput.json").read_text())
    assert set(throughput["median"]) == {"ours", "ours_fused"}
    checkpointing = json.loads((out / "train_checkpointing.json").read_text())
    assert set(checkpointing["by_batch"]) == {"2"}
    verdict = json.loads((out / "mini_verdict" / "verdict.json").read_text())
    assert verdict["verdict"] in ("keep", "replace") and len(verdict["worlds"]) == 3
    assert "nothing installed" in (out / "setup.log").read_text()
    assert not (REPO / ".venv-gpu").exists()  # no environment made, nothing installed
    machine = json.loads((out / "machine.json").read_text())
    assert machine["torch"]


def test_a_session_out_of_time_skips_the_stages_it_cannot_start(tmp_path):
    done, out = _session(tmp_path, "train_throughput", "mini_gpu", seconds="0")
    assert done.returncode == 0, done.stderr[-2000:]
    records = _records(out)
    assert list(records) == ["train_throughput", "mini_gpu"]
    for record in records.values():
        assert record["status"] == "skipped" and "of the session left" in record["reason"]
    assert not (out / "train_throughput.json").exists()


def test_unknown_stages_and_options_are_refused_before_any_work(tmp_path):
    for args in (["nonsense"], ["--fast"]):
        done = subprocess.run(
            ["bash", str(SCRIPT), *args],
            cwd=REPO,
            env={**os.environ, "OUT": str(tmp_path / "out")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert "error: unknown" in done.stderr
        assert not (tmp_path / "out" / "session.jsonl").exists()
