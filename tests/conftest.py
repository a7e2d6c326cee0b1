"""Shared fixtures: tiny models built in the test process, never downloaded."""

from __future__ import annotations

import os

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
