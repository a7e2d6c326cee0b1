from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from exemplar_core.cli import main
from exemplar_core.formats import checkpoint_from_model, save_single_file


@pytest.fixture()
def files(tmp_path, tiny_model):
    ckpt = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "tiny.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (72, 100, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    mask = np.zeros((72, 100), np.uint8)
    mask[20:50, 30:70] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(rng.integers(0, 255, (40, 30, 4), dtype=np.uint8), "RGBA").save(
        tmp_path / "ex.png"
    )
    return tmp_path, ckpt


def _args(tmp, ckpt, out="out.png", *extra):
    return [
        "edit", "--checkpoint", str(ckpt), "--source", str(tmp / "src.png"),
        "--mask", str(tmp / "mask.png"), "--exemplar", str(tmp / "ex.png"),
        "--out", str(tmp / out), "--steps", "2", "--scheduler", "ddim", *extra,
    ]  # fmt: skip


def test_edit_command_writes_a_result_of_the_source_size(files, capsys):
    tmp, ckpt = files
    assert main(_args(tmp, ckpt)) == 0
    out = np.asarray(Image.open(tmp / "out.png"))
    src = np.asarray(Image.open(tmp / "src.png"))
    assert out.shape == src.shape
    assert np.array_equal(out[:3], src[:3]), "rows beyond the 16 px feather band are the source"
    assert "wrote" in capsys.readouterr().out


def test_edit_refuses_to_overwrite_and_to_write_over_an_input(files, capsys):
    tmp, ckpt = files
    (tmp / "out.png").write_bytes(b"user file")
    assert main(_args(tmp, ckpt)) == 2
    assert (tmp / "out.png").read_bytes() == b"user file"
    assert main(_args(tmp, ckpt, "src.png", "--overwrite")) == 2
    assert "is one of the inputs" in capsys.readouterr().err


def test_mask_of_another_size_fails_clearly_unless_resize_is_asked(files, capsys):
    tmp, ckpt = files
    Image.fromarray(np.full((36, 50), 255, np.uint8)).save(tmp / "mask.png")
    assert main(_args(tmp, ckpt)) == 2
    assert "mask is 50x36 but the source is 100x72" in capsys.readouterr().err
    assert main(_args(tmp, ckpt, "out2.png", "--resize-mask")) == 0


def test_missing_checkpoint_and_unreadable_source_exit_2_with_the_reason(files, capsys):
    tmp, ckpt = files
    assert main(_args(tmp, tmp / "none.safetensors")) == 2
    assert "none.safetensors" in capsys.readouterr().err
    (tmp / "src.png").write_bytes(b"not an image")
    assert main(_args(tmp, ckpt)) == 2
    assert "not a readable image" in capsys.readouterr().err


def test_16_bit_greyscale_source_is_accepted(files):
    tmp, ckpt = files
    Image.fromarray(np.full((72, 100), 40000, np.uint16)).save(tmp / "src.png")
    assert main(_args(tmp, ckpt)) == 0
    assert torch.tensor(np.asarray(Image.open(tmp / "out.png"))).shape == (72, 100, 3)
