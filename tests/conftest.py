"""Shared fixtures: tiny models and datasets built in the test process (never downloaded)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_configs():
    from exemplar_core.model import ModelConfigs

    return ModelConfigs.tiny()


@pytest.fixture()
def tiny_model(tiny_configs):
    """A freshly initialised tiny Paint-by-Example model (seeded, so identical in every test)."""
    from exemplar_core.model import PaintByExampleModel

    torch.manual_seed(1234)
    return PaintByExampleModel(tiny_configs).eval()


@pytest.fixture()
def umask():
    """``umask(mask)`` sets the process umask for one test; the previous one is restored after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The trainer tests' dataset: 7 tiny PNGs and their JSONL annotation file (one per module)."""
    from train_support import make_images, write_jsonl

    folder = tmp_path_factory.mktemp("data")
    return write_jsonl(folder / "ann.jsonl", make_images(folder, 7))


@pytest.fixture()
def comfy():
    """ComfyUI's ``comfy`` package from the checkout COMFYUI_PATH names, set to run on the CPU;
    the test is skipped where COMFYUI_PATH is not set."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("COMFYUI_PATH is not set")
    if path not in sys.path:
        sys.path.append(path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return comfy


# On CI (CI=true; .ci/run gives it ComfyUI and Chromium) a skipped host or browser test is a
# failure: a skip there would prove nothing about the user's path.
_SKIPPED_ON_CI: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and os.environ.get("CI") and "host" in report.keywords:
        _SKIPPED_ON_CI.append(f"{report.nodeid}: {report.longrepr[-1]}")


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED_ON_CI:
        print("\nhost or browser tests skipped on CI (each must run there):")
        for line in _SKIPPED_ON_CI:
            print(f"  {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
