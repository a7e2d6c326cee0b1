from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from exemplar_core.checkpoint import checkpoint_from_model, save_single_file
from exemplar_core.cli import main


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
        "edit",
        "--checkpoint",
        str(ckpt),
        "--source",
        str(tmp / "src.png"),
        "--mask",
        str(tmp / "mask.png"),
        "--exemplar",
        str(tmp / "ex.png"),
        "--out",
        str(tmp / out),
        "--steps",
        "2",
        "--scheduler",
        "ddim",
        *extra,
    ]


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


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--scale", "nan", "--scale must be a finite number between 0 and 50, got nan"),
        ("--scale", "inf", "--scale must be a finite number between 0 and 50, got inf"),
        ("--scale", "-1", "--scale must be a finite number between 0 and 50, got -1"),
        ("--similarity", "nan", "--similarity must be a finite number between 0 and 50, got nan"),
        ("--context-margin", "nan", "--context-margin must be a finite number between 0 and 4"),
        ("--feather", "-3", "--feather must be a whole number between 0 and 256, got -3"),
        ("--mask-blur", "-1", "--mask-blur must be a whole number between 0 and 256, got -1"),
        ("--mask-grow", "200", "--mask-grow 200 is larger than the 100x72 image: use at most 100"),
        ("--seed", str(2**64), "--seed must be a whole number between 0 and 18446744073709551615"),
        ("--steps", "0", "--steps must be a whole number between 1 and 1000, got 0"),
        ("--size", "100000", "--size must be a whole number between 1 and 2048"),
    ],
)
def test_edit_refuses_nan_infinity_and_out_of_range_options_by_name(
    files, capsys, option, value, message
):
    tmp, ckpt = files
    assert main([*_args(tmp, ckpt), option, value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp / "out.png").exists()


def test_similarity_and_its_old_name_scale_give_the_same_settings(files, monkeypatch):
    from types import SimpleNamespace

    from exemplar_core.editor import Editor

    tmp, ckpt = files
    seen = []

    class Recorder:
        device = "cpu"

        def edit(self, source, mask, exemplar, settings, exemplar_mask=None):
            seen.append(settings)
            return SimpleNamespace(image=source, region=None)

        def enable_compile(self, mode):
            assert mode == "off"  # the default: no compile unless --compile says so

    monkeypatch.setattr(Editor, "from_file", classmethod(lambda cls, *a, **k: Recorder()))
    assert main(_args(tmp, ckpt, "a.png", "--similarity", "3.5")) == 0
    assert main(_args(tmp, ckpt, "b.png", "--scale", "3.5")) == 0
    assert main(_args(tmp, ckpt, "c.png")) == 0
    new, old, default = seen
    assert new == old and new.similarity == 3.5 and default.similarity == 5.0
    assert (new.name_of("similarity"), old.name_of("similarity")) == ("--similarity", "--scale")


def test_a_size_the_model_cannot_use_names_the_size_option(files, capsys):
    tmp, ckpt = files
    assert main([*_args(tmp, ckpt), "--size", "100"]) == 2
    assert "error: --size must be a positive multiple of 16, got 100" in capsys.readouterr().err


def test_a_checkpoint_with_nan_weights_fails_instead_of_writing_a_black_image(
    files, capsys, tiny_model
):
    tmp, _ = files
    with torch.no_grad():
        tiny_model.unet.conv_in.weight.fill_(float("nan"))
    bad = save_single_file(checkpoint_from_model(tiny_model), tmp / "diverged.safetensors")
    assert main(_args(tmp, bad)) == 2
    err = capsys.readouterr().err
    assert "the UNet of" in err and "diverged.safetensors produced NaN" in err
    assert "weights hold NaN or infinite values" in err and "conv_in.weight" in err
    assert not (tmp / "out.png").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--scales", "1,nan"], "--scales must be a finite number between 0 and 50, got nan"),
        (["--result-scale", "inf"], "--result-scale must be a finite number between 0 and 50"),
        (["--steps", "0"], "--steps must be a whole number between 1 and 1000, got 0"),
    ],
)
def test_demo_refuses_bad_numbers_by_option_before_loading(files, capsys, extra, message):
    tmp, ckpt = files
    args = ["demo", "--checkpoint", str(ckpt), "--out", str(tmp / "demo"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp / "demo").exists()


def test_preview_writes_the_window_with_its_outline_and_the_encoders_view(
    files, tiny_model, capsys
):
    from exemplar_core import crop
    from exemplar_core.image_io import load_mask, load_rgb, to_uint8
    from exemplar_core.preview import VIEW_FRAME, preview_layout, window_preview

    tmp, ckpt = files
    preview = tmp / "previews" / "p.png"
    assert main(_args(tmp, ckpt, "out.png", "--preview", str(preview), "--feather", "4")) == 0
    assert f"wrote the preview {preview}" in capsys.readouterr().out
    saved = np.asarray(Image.open(preview)).astype(int)
    mask = (load_mask(tmp / "mask.png") >= 0.5).float()
    configs = tiny_model.configs
    source = load_rgb(tmp / "src.png")
    window = crop.prepare_window(source, mask, 0.25, configs.native_size, 4, configs.size_multiple)
    outlined = to_uint8(window_preview(window.image, window.edit_mask)).astype(int)
    h, w = outlined.shape[:2]
    assert np.abs(saved[:h, :w] - outlined).max() <= 1
    side = configs.encoder.image_size
    layout = preview_layout((h, w), (side, side))
    assert saved.shape[:2] == (layout.height, layout.width)
    v = layout.view
    assert (saved[v.y0 - 1, v.x0 : v.x1] == np.array(VIEW_FRAME) * 255).all()


def test_preview_never_replaces_a_file_and_is_checked_before_the_model_loads(files, capsys):
    tmp, ckpt = files
    out = tmp / "out.png"
    users = tmp / "users.png"
    users.write_bytes(b"the user's picture")
    assert main(_args(tmp, ckpt, "out.png", "--preview", str(users))) == 2
    err = capsys.readouterr().err
    assert "--preview" in err and "already exists" in err
    assert users.read_bytes() == b"the user's picture" and not out.exists()
    assert main(_args(tmp, ckpt, "out.png", "--preview", str(out))) == 2
    assert f"--preview {out} is the --out file" in capsys.readouterr().err and not out.exists()
    assert main(_args(tmp, ckpt, "out.png", "--preview", str(tmp / "src.png"))) == 2
    assert "is one of the inputs" in capsys.readouterr().err and not out.exists()
    assert main(_args(tmp, ckpt, "out.png", "--preview", str(tmp / "p.tif"))) == 2
    assert "must end in .png" in capsys.readouterr().err and not out.exists()
    assert main(_args(tmp, ckpt, "out.png", "--preview", str(users), "--overwrite")) == 0
    assert users.read_bytes()[:4] == b"\x89PNG"


def test_a_faint_alpha_is_reported_as_ignored_and_edits_as_the_opaque_exemplar(
    files, capsys, caplog
):
    tmp, ckpt = files
    colours = np.asarray(Image.open(tmp / "ex.png"))[..., :3]
    Image.fromarray(colours).save(tmp / "ex.png")
    assert main(_args(tmp, ckpt, "opaque.png")) == 0
    faint = np.concatenate([colours, np.full((*colours.shape[:2], 1), 76, np.uint8)], axis=-1)
    Image.fromarray(faint, "RGBA").save(tmp / "ex.png")  # alpha 0.3 everywhere: marks nothing
    capsys.readouterr()
    assert main(_args(tmp, ckpt, "faint.png")) == 0
    assert "its alpha is the exemplar mask" not in capsys.readouterr().out
    assert "its alpha marks no object" in caplog.text
    opaque, faint_out = (np.asarray(Image.open(tmp / name)) for name in ("opaque.png", "faint.png"))
    assert np.array_equal(faint_out, opaque)
