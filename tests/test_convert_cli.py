"""The ``convert`` and ``info`` commands."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from exemplar_core import checkpoint
from exemplar_core.checkpoint import cli
from exemplar_core.model import ModelConfigs, PaintByExampleModel


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory) -> tuple[Path, checkpoint.PbECheckpoint]:
    torch.manual_seed(0)
    configs = ModelConfigs.tiny()
    # The official layout cannot store heads: use the ones the reader assumes.
    configs = ModelConfigs(
        {**configs.unet, "attention_head_dim": 8, "sample_size": 64},
        {**configs.vae, "sample_size": 512},
        configs.encoder,
    )
    ckpt = checkpoint.checkpoint_from_model(PaintByExampleModel(configs))
    path = tmp_path_factory.mktemp("cli") / "model.ckpt"
    torch.save({"state_dict": checkpoint.official_state_dict(ckpt)}, path)
    return path, ckpt


def test_convert_writes_a_lossless_single_file_and_says_what_it_found(
    official_ckpt, tmp_path, capsys
):
    src, ckpt = official_ckpt
    dst = tmp_path / "out.safetensors"
    assert cli.main(["convert", str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "official LDM checkpoint (.ckpt" in printed
    assert "unet:    in 9, out 4, channels [32, 64]" in printed
    assert "params:" in printed and "dtype:   unet float32" in printed
    assert f"wrote {dst}" in printed
    loaded = checkpoint.load_checkpoint(dst)
    assert loaded.metadata["converted_from"] == "official-ckpt"
    for name, part in ckpt.parts().items():
        got = loaded.parts()[name]
        assert got.keys() == part.keys()
        assert all(torch.equal(got[k], part[k]) for k in part), name


def test_convert_refuses_to_overwrite_without_overwrite(official_ckpt, tmp_path, capsys):
    src, _ = official_ckpt
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"keep me")
    assert cli.main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert dst.read_bytes() == b"keep me"
    assert cli.main(["convert", str(src), str(dst), "--overwrite"]) == 0
    assert checkpoint.detect_format(dst) == "single-file"


def test_old_force_flag_still_overwrites_with_a_deprecation_note(official_ckpt, tmp_path, capsys):
    src, _ = official_ckpt
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"old")
    assert cli.main(["convert", str(src), str(dst), "--force"]) == 0
    assert "--force is deprecated" in capsys.readouterr().err
    assert checkpoint.detect_format(dst) == "single-file"


@pytest.mark.parametrize(("flag", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_convert_casts_floating_tensors_to_the_requested_dtype(
    official_ckpt, tmp_path, flag, dtype
):
    src, _ = official_ckpt
    dst = tmp_path / f"{flag}.safetensors"
    assert cli.main(["convert", str(src), str(dst), "--dtype", flag]) == 0
    assert {t.dtype for t in load_file(dst).values()} == {dtype}


def test_convert_of_a_non_pbe_checkpoint_fails_with_the_reason(tmp_path, capsys):
    src = tmp_path / "sd15-inpainting.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)}, src)
    dst = tmp_path / "out.safetensors"
    assert cli.main(["convert", str(src), str(dst)]) == 2
    assert "inpainting" in capsys.readouterr().err
    assert not dst.exists()


def test_info_describes_a_checkpoint(official_ckpt, capsys):
    src, _ = official_ckpt
    assert cli.main(["info", str(src)]) == 0
    printed = capsys.readouterr().out
    assert "format:  official LDM checkpoint" in printed
    assert "mapper 2 blocks" in printed and "encoder:" in printed


def test_info_exits_non_zero_with_the_reason(tmp_path, capsys):
    path = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.0.model.ln_final.weight": torch.zeros(4)}, path)
    assert cli.main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not a Paint-by-Example checkpoint" in err and "SDXL" in err


def test_register_adds_both_commands_to_another_cli():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", "a.ckpt", "b.safetensors", "--dtype", "bf16"])
    assert args.func is cli.run_convert and args.dtype == "bf16" and not args.overwrite
    assert parser.parse_args(["info", "x"]).func is cli.run_info


def test_module_runs_as_a_script(official_ckpt):
    src, _ = official_ckpt
    result = subprocess.run(
        [sys.executable, "-m", "exemplar_core.checkpoint.cli", "info", str(src)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "official LDM checkpoint" in result.stdout


def test_info_prints_metadata_whole_as_json_and_cuts_only_with_a_note(official_ckpt, tmp_path):
    _, ckpt = official_ckpt
    config = {"learning_rate": 1e-5, "dataset": "subject", "steps": 4000}
    long = {f"key_{i:03d}": "x" * 20 for i in range(200)}  # ~6 KB: above the preview
    ckpt.metadata = {"train_config": json.dumps(config), "long": json.dumps(long), "note": "hi"}
    path = checkpoint.save_single_file(ckpt, tmp_path / "m.safetensors")
    out = io.StringIO()
    assert cli.run_info(argparse.Namespace(file=str(path), full=False), out) == 0
    printed = out.getvalue()
    block = printed.split("  train_config: ", 1)[1].split("\n  note:")[0]
    assert json.loads(block.replace("\n    ", "\n")) == config  # whole, readable JSON
    assert "note: hi" in printed
    assert "more characters, use --full" in printed
    out = io.StringIO()
    assert cli.run_info(argparse.Namespace(file=str(path), full=True), out) == 0
    block = out.getvalue().split("  long: ", 1)[1].split("\n  note:")[0]
    assert json.loads(block.replace("\n    ", "\n")) == long
