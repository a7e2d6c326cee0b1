"""``--help`` of every command explains every option and states its default.

The parsers are walked, not listed: an option added later without help text or without its
default fails here.
"""

from __future__ import annotations

import argparse

import pytest

from exemplar_core import headless
from exemplar_core.cli import build_parser


def _parsers() -> dict[str, argparse.ArgumentParser]:
    top = build_parser()
    parsers = {"python -m exemplar_core": top}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers.update({f"python -m exemplar_core {n}": p for n, p in action.choices.items()})
    parsers["python -m exemplar_core.headless"] = headless.build_parser()
    return parsers


PARSERS = _parsers()


def _documented_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:  # a deprecated alias kept for old scripts
            continue
        yield action


def test_every_command_is_walked():
    names = {name.split()[-1] for name in PARSERS}
    assert {"edit", "convert", "info", "merge-lora", "demo", "headless"} <= names
    assert "exemplar_core.headless" in names


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_that_states_its_default(name):
    parser = PARSERS[name]
    formatter = parser._get_formatter()
    problems = []
    for action in _documented_actions(parser):
        label = "/".join(action.option_strings) or action.dest
        text = formatter._expand_help(action) if action.help else ""
        if len(text) < 12:
            problems.append(f"{label}: no help text")
            continue
        if not action.option_strings or action.required:
            continue  # positional or required: there is no default to state
        if "default" not in text:
            problems.append(f"{label}: help does not state the default ({text!r})")
        elif "%(default)" in action.help and action.default is None:
            problems.append(f"{label}: prints 'None' as its default")
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("command", ["edit", "convert", "info", "demo", "headless"])
def test_help_prints_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert printed.count("(default") >= 1


def test_edit_help_names_the_defaults_of_device_dtype_and_scheduler(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "(default: auto)" in printed  # --device and --dtype
    assert "(default: pndm)" in printed
    assert "processing size" in printed  # what --no-paste-back writes


def test_headless_help_names_server_out_and_timeout_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["headless", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "(default: http://127.0.0.1:8188)" in printed
    assert "(default: comfyui-results)" in printed
    assert "(default: 600)" in printed


def test_force_is_hidden_but_still_accepted():
    parser = PARSERS["python -m exemplar_core convert"]
    assert "--force" not in parser.format_help()
    assert parser.parse_args(["a.ckpt", "b.safetensors", "--force"]).force
