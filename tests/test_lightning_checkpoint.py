"""The Hub's current model.ckpt is a full Lightning checkpoint: it pickles a ModelCheckpoint
callback and numpy scalars next to the weights. It must load with no code from it running."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch

from exemplar_core import checkpoint

MODULE = "pytorch_lightning.callbacks.model_checkpoint"


MARKER: dict[str, str] = {}


class ModelCheckpoint:
    """Pickled under Lightning's name; its own code creates a marker folder when unpickled."""

    def __init__(self):
        self.best_model_score = np.float64(0.123)
        self.dirpath = "logs/checkpoints"

    def __setstate__(self, state):
        os.mkdir(MARKER["path"])  # real unpickling would run the class's own code
        self.__dict__.update(state)


class Payload:
    def __reduce__(self):
        return (os.mkdir, (MARKER["path"],))


@pytest.fixture()
def fake_lightning(tmp_path):
    """Register ModelCheckpoint under Lightning's module path while the file is written."""
    marker = tmp_path / "lightning_code_ran"
    MARKER["path"] = str(marker)
    ModelCheckpoint.__module__ = MODULE
    saved = {}
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", MODULE):
        saved[name] = sys.modules.get(name)
        sys.modules[name] = types.ModuleType(name)
    sys.modules[MODULE].ModelCheckpoint = ModelCheckpoint
    yield ModelCheckpoint, marker
    for name, old in saved.items():
        if old is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = old


def _lightning_file(path, tiny_model, callback_cls):
    state_dict = checkpoint.official_state_dict(checkpoint.checkpoint_from_model(tiny_model))
    torch.save(
        {
            "epoch": 39,
            "global_step": 123_456,
            "pytorch-lightning_version": "1.4.2",
            "state_dict": state_dict,
            "callbacks": {callback_cls: {"best_model_score": np.float64(0.5)}},
            "checkpoint": callback_cls(),
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}],
        },
        path,
    )
    return state_dict


def test_lightning_checkpoint_loads_without_running_its_code(tmp_path, tiny_model, fake_lightning):
    callback_cls, marker = fake_lightning
    path = tmp_path / "model.ckpt"
    original = _lightning_file(path, tiny_model, callback_cls)
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", MODULE):
        sys.modules.pop(name)  # as on a user's machine without Lightning
    ckpt = checkpoint.load_checkpoint(path)
    assert not marker.exists(), "no pickled code ran"
    assert torch.equal(ckpt.encoder["learnable_vector"], original["learnable_vector"])
    assert torch.equal(
        ckpt.unet["input_blocks.0.0.weight"],
        original["model.diffusion_model.input_blocks.0.0.weight"],
    )


def test_an_unknown_global_next_to_lightning_metadata_is_still_refused(tmp_path, fake_lightning):
    callback_cls, marker = fake_lightning
    path = tmp_path / "mixed.ckpt"
    torch.save({"state_dict": {}, "callbacks": {callback_cls: {}}, "x": Payload()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="posix.mkdir|os.mkdir|mkdir"):
        checkpoint.load_checkpoint(path)
    assert not marker.exists()
