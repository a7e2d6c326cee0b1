"""The soak benchmark's parts that need no ComfyUI: its plan, its prompts, its verdict and its
refusals (the run itself is tests/host/test_soak.py)."""

from __future__ import annotations

import json
import math
import random

import pytest
from ports import closed_port

from bench import soak
from bench.common import host_harness


def test_default_plan_has_interrupts_and_every_kind_of_bad_prompt():
    kinds = soak.plan(soak.SoakOptions())
    assert len(kinds) == 200
    assert kinds.count("bad") == 8 >= len(soak.BAD_PROMPTS)
    assert kinds.count("interrupt") == 11  # every 15th, less 75 and 150, which are bad
    assert kinds[14] == "interrupt" and kinds[24] == "bad"


def test_every_template_gets_few_steps_and_saves_into_the_soak_folder():
    rng = random.Random(0)
    for name in soak.TEMPLATES:
        prompt = soak.load_template(name)
        soak.vary(prompt, rng)
        samplers = [n for n in prompt.values() if "steps" in n["inputs"]]
        assert samplers and all(2 <= n["inputs"]["steps"] <= 6 for n in samplers), name
        saves = [n for n in prompt.values() if n["class_type"] == "SaveImage"]
        assert saves and all(
            n["inputs"]["filename_prefix"].startswith(soak.OUTPUT_PREFIX) for n in saves
        )


@pytest.mark.parametrize("name", list(soak.BAD_PROMPTS))
def test_each_bad_prompt_changes_the_template_and_names_its_problem(name):
    prompt = soak.load_template(soak.BAD_TEMPLATE)
    before = json.dumps(prompt)
    word = soak.BAD_PROMPTS[name](prompt, "paint-by-example/mask.png")
    assert word and json.dumps(prompt) != before
    if name == "NaN similarity":
        assert math.isnan(soak.node_titled(prompt, "sampler")["inputs"]["similarity"])


def test_a_bad_prompt_failing_without_naming_its_problem_is_unexpected():
    assert soak.judge_failure("mask is 40x24 but the image is 128x128", "40x24") == (
        "failed as expected"
    )
    assert soak.judge_failure("CUDA error: out of memory", "40x24") == "failed unexpectedly"
    assert soak.judge_failure("node 6 failed", None) == "failed unexpectedly"


def soak_with(outcomes, baseline=1000.0, end=1000.0, alive=True) -> soak.Soak:
    result = soak.Soak(server="http://127.0.0.1:1", prompts=len(outcomes))
    result.results = [soak.Result(i, "t", o, 1.0) for i, o in enumerate(outcomes, 1)]
    result.rss_baseline_mib, result.rss_end_mib, result.server_alive = baseline, end, alive
    return result


def test_the_target_is_missed_by_an_unexpected_failure_a_dead_server_or_rss_growth():
    fine = ["succeeded", "interrupted", "failed as expected"]
    assert soak_with(fine, end=1049.0).misses() == []
    assert soak_with(fine, end=1050.0).misses() == ["RSS grew 5.0% (target < 5%)"]
    assert soak_with([*fine, "failed unexpectedly"]).misses() == ["1 unexpected failure(s)"]
    assert soak_with(fine, alive=False).misses() == ["the server died"]
    unknown = soak_with(fine, baseline=None, end=None)
    assert unknown.misses() == [] and "RSS: unknown" in soak.report(unknown)


def test_an_existing_json_file_is_refused_and_left_as_it_was(tmp_path, capsys):
    existing = tmp_path / "figures.json"
    existing.write_text("the user's own file")
    code = soak.main(["--server", "http://127.0.0.1:1", "--json", str(existing)])
    assert code == 2 and existing.read_text() == "the user's own file"
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value",
    [
        ("--prompts", "0"),
        ("--rss-after", "0"),
        ("--bad-every", "-1"),
        ("--interrupt-every", "x"),
        ("--timeout", "nan"),
    ],
)
def test_a_number_out_of_range_is_refused_with_the_option(option, value, capsys):
    with pytest.raises(SystemExit) as info:
        soak.main(["--server", "http://127.0.0.1:1", option, value])
    assert info.value.code == 2 and f"argument {option}:" in capsys.readouterr().err


def test_without_comfyui_path_or_server_it_says_what_to_set(monkeypatch, capsys):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    assert soak.main(["--prompts", "3"]) == 2
    err = capsys.readouterr().err
    assert "COMFYUI_PATH=/path/to/ComfyUI" in err and "--server" in err


def test_no_server_at_the_address_is_an_error_with_the_address(capsys):
    with closed_port() as port:
        assert soak.main(["--server", f"http://127.0.0.1:{port}", "--prompts", "2"]) == 1
    assert f"cannot reach ComfyUI at http://127.0.0.1:{port}" in capsys.readouterr().err


class VanishingServer:
    """A client whose server answers two prompts, then cannot be reached any more."""

    server = "http://127.0.0.1:1"

    def __init__(self):
        self.prompts = 0

    def upload_image(self, path, data):
        return f"paint-by-example/{path.name}"

    def get_json(self, path):
        raise soak.HeadlessError("cannot reach ComfyUI", soak.EXIT_USAGE)


def test_a_server_that_goes_away_stops_the_soak_and_misses_the_target(monkeypatch):
    client = VanishingServer()

    def run_prompt(client, prompt, timeout, interrupt_node=None, expect=None):
        client.prompts += 1
        if client.prompts > 2:
            raise ConnectionRefusedError("connection refused")
        return "succeeded", 0.5, ""

    monkeypatch.setattr(soak, "run_prompt", run_prompt)
    result = soak.soak(client, None, soak.SoakOptions(prompts=5), log=lambda line: None)
    assert len(result.results) == 2 and "prompt 3" in result.stopped_early
    assert result.misses() == ["the server died", "only 2 of 5 prompts ran"]
    assert "stopped early at prompt 3" in soak.report(result)


def test_the_report_counts_each_kind_of_bad_prompt_and_lists_the_unexpected():
    result = soak_with(["succeeded"] * 3)
    result.results += [
        soak.Result(4, "bad: missing model", "failed as expected", 0.1, "not in list"),
        soak.Result(5, "bad: NaN similarity", "failed unexpectedly", 0.2, "ran a bad prompt"),
        soak.Result(6, "bad: missing model", "failed as expected", 0.1, "not in list"),
    ]
    result.prompts = 6
    text = soak.report(result)
    assert "bad prompts failed as expected: missing model 2/2, NaN similarity 0/1" in text
    assert "unexpected: prompt 5 (bad: NaN similarity): ran a bad prompt" in text
    assert "target: MISSED: 1 unexpected failure(s)" in text


def test_a_comfyui_that_does_not_start_is_one_line_naming_why(tmp_path, monkeypatch, capsys):
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "main.py").write_text(
        "import sys\nprint('Starting server')\n"
        "sys.exit(\"ModuleNotFoundError: No module named 'aiohttp'\")\n"
    )
    monkeypatch.setenv("COMFYUI_PATH", str(comfy))
    pbe_host = host_harness()
    monkeypatch.setattr(pbe_host, "COMFYUI_PATH", str(comfy))
    assert soak.main(["--prompts", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: ComfyUI exited during start-up: ModuleNotFoundError"), err
    assert "'aiohttp'" in err and str(comfy) in err
