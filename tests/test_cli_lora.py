"""LoRA files on the command line: ``edit --lora``, ``merge-lora`` and ``info``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli_edit import _args, files  # noqa: F401 - the tiny model and images

from exemplar_core import lora as L
from exemplar_core.checkpoint import load_model
from exemplar_core.cli import main

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
CONV = "up_blocks.0.resnets.0.conv1"


def _write_lora(path, model, scale: float = 1.0, seed: int = 0):
    """A LoRA with strong random updates on a cross-attention layer, a convolution, proj_out."""
    torch.manual_seed(seed)
    tensors = {}
    for module_path in (ATTN, CONV):
        w = model.unet.get_submodule(module_path).weight
        down = scale * torch.randn(4, *w.shape[1:])
        up = scale * torch.randn(w.shape[0], 4, *([1, 1] if w.ndim == 4 else []))
        tensors.update(L.lora_pair(L.unet_key(module_path), down, up, 4))
    tensors["pbe_exemplar.proj_out.diff"] = scale * torch.randn_like(model.encoder.proj_out.weight)
    meta = {
        "rank": "4",
        "alpha": "4",
        "exemplar": "full",
        "base_model": "tiny",
        "training_step": "9",
    }
    return L.save_lora(tensors, meta, path)


def _image(path):
    return np.asarray(Image.open(path))


@pytest.mark.slow
def test_edit_with_lora_changes_the_result_strength_zero_does_not_and_options_stack(
    files,  # noqa: F811
    capsys,
):
    tmp, ckpt = files
    lora = _write_lora(tmp / "subject.safetensors", load_model(ckpt))
    assert main(_args(tmp, ckpt, "plain.png")) == 0
    assert main(_args(tmp, ckpt, "zero.png", "--lora", f"{lora}:0")) == 0
    assert main(_args(tmp, ckpt, "lora.png", "--lora", str(lora))) == 0
    assert main(_args(tmp, ckpt, "half.png", "--lora", f"{lora}:0.5", "--lora", f"{lora}:.5")) == 0
    assert "applied LoRA" in capsys.readouterr().out
    plain, lora_out = _image(tmp / "plain.png"), _image(tmp / "lora.png").astype(int)
    assert np.array_equal(_image(tmp / "zero.png"), plain)
    assert np.abs(lora_out - plain).max() > 10
    # two half-strength options add up to one full one (up to fp32 rounding in the weights)
    assert np.abs(_image(tmp / "half.png").astype(int) - lora_out).max() <= 1


def test_edit_refuses_bad_lora_arguments_before_loading_the_model(files, capsys):  # noqa: F811
    tmp, ckpt = files
    lora = _write_lora(tmp / "a.safetensors", load_model(ckpt))
    assert main(_args(tmp, ckpt, "x.png", "--lora", f"{lora}:x")) == 2
    assert "--lora" in (err := capsys.readouterr().err) and "the strength 'x'" in err
    assert main(_args(tmp, ckpt, "x.png", "--lora", f"{lora}:nan")) == 2
    assert "must be a finite number" in capsys.readouterr().err
    assert main(_args(tmp, ckpt, "x.png", "--lora", str(tmp / "none.safetensors"))) == 2
    assert "none.safetensors does not exist" in capsys.readouterr().err
    assert not (tmp / "x.png").exists()


def test_merge_lora_writes_the_weights_apply_lora_gives(files, capsys):  # noqa: F811
    tmp, ckpt = files
    base = load_model(ckpt)
    a = _write_lora(tmp / "a.safetensors", base, scale=0.1, seed=1)
    b = _write_lora(tmp / "b.safetensors", base, scale=0.1, seed=2)
    out = tmp / "merged" / "m.safetensors"
    args = ["merge-lora", str(ckpt), f"{a}:0.5", str(b), "--out", str(out), "--dtype", "fp32"]
    assert main(args) == 0
    assert f"wrote {out} (fp32" in capsys.readouterr().out
    L.apply_lora(base, L.read_lora(a), 0.5)
    L.apply_lora(base, L.read_lora(b), 1.0)
    merged = load_model(out)
    expected = base.state_dict()
    got = merged.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    from exemplar_core.checkpoint import load_checkpoint

    record = json.loads(load_checkpoint(out, lazy=True).metadata["merged_loras"])
    assert [(r["file"], r["strength"]) for r in record] == [
        ("a.safetensors", 0.5),
        ("b.safetensors", 1.0),
    ]


def test_merge_lora_never_overwrites_without_overwrite_nor_the_base(files, capsys):  # noqa: F811
    tmp, ckpt = files
    lora = _write_lora(tmp / "a.safetensors", load_model(ckpt))
    out = tmp / "m.safetensors"
    out.write_bytes(b"user file")
    assert main(["merge-lora", str(ckpt), str(lora), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"user file"
    base_bytes = ckpt.read_bytes()
    assert main(["merge-lora", str(ckpt), str(lora), "--out", str(ckpt), "--overwrite"]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    assert ckpt.read_bytes() == base_bytes
    assert main(["merge-lora", str(ckpt), str(lora), "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != b"user file"


def test_info_describes_a_lora_file(files, capsys):  # noqa: F811
    tmp, ckpt = files
    lora = _write_lora(tmp / "a.safetensors", load_model(ckpt))
    assert main(["info", str(lora)]) == 0
    out = capsys.readouterr().out
    for line in (
        "format:   Paint-by-Example LoRA, format version 1",
        "rank:     4, alpha 4 (scale alpha/rank = 1)",
        "unet:     2 layers (attention 1, conv 1)",
        "exemplar: full: stored whole as differences: proj_out",
        "base:     tiny",
        "trained:  9 steps",
    ):
        assert line in out
    assert "params:   " in out and "MiB" in out


def test_edit_and_merge_lora_refuse_a_text_encoder_lora_before_loading_the_model(
    files,  # noqa: F811
    capsys,
    monkeypatch,
):
    from exemplar_core.checkpoint import cli as checkpoint_cli
    from exemplar_core.editor import Editor

    def never(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the LoRA was refused")

    monkeypatch.setattr(Editor, "from_file", never)
    monkeypatch.setattr(checkpoint_cli, "load_checkpoint", never)
    tmp, ckpt = files
    text = L.lora_pair(
        "lora_te_text_model_encoder_layers_0_mlp_fc1", torch.ones(4, 768), torch.ones(8, 4), 4
    )
    lora = L.save_lora(text, {}, tmp / "sd15-text.safetensors")
    assert main(_args(tmp, ckpt, "x.png", "--lora", str(lora))) == 2
    assert "SD 1.x LoRA with a text-encoder part" in capsys.readouterr().err
    assert main(["merge-lora", str(ckpt), str(lora), "--out", str(tmp / "m.safetensors")]) == 2
    assert "SD 1.x LoRA with a text-encoder part" in capsys.readouterr().err
    assert not (tmp / "x.png").exists() and not (tmp / "m.safetensors").exists()


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        ({"unet": "float16", "vae": "float16", "encoder": "float16"}, "fp16"),
        ({"unet": "bfloat16", "vae": "bfloat16", "encoder": "none"}, "bf16"),
        ({"unet": "float16", "vae": "float32", "encoder": "float16"}, "fp32"),
        ({"unet": "float16+float32", "vae": "float16", "encoder": "float16"}, "fp32"),
    ],
)
def test_merge_lora_keeps_the_bases_one_dtype_and_writes_fp32_when_it_mixes(dtypes, expected):
    from types import SimpleNamespace

    from exemplar_core.checkpoint.cli import _storage_dtype

    assert _storage_dtype(SimpleNamespace(dtypes=lambda: dtypes)) == expected
