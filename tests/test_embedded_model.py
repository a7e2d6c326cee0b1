"""The embedded default model (models/pbe-mini.safetensors) is part of the pack."""

from __future__ import annotations

from pathlib import Path

from exemplar_core.checkpoint import load_checkpoint
from exemplar_core.cli import main as cli_main
from exemplar_core.demo import DEFAULT_MODEL, EXAMPLES
from exemplar_core.model import ModelConfigs


def test_embedded_model_is_a_small_project_single_file_of_the_mini_architecture():
    assert DEFAULT_MODEL.is_file(), f"{DEFAULT_MODEL} is missing from the pack"
    assert DEFAULT_MODEL.stat().st_size <= 30 * 2**20
    ckpt = load_checkpoint(DEFAULT_MODEL)
    mini = ModelConfigs.mini()
    assert ckpt.format == "single-file"
    assert ckpt.configs.unet == mini.unet
    assert ckpt.configs.encoder == mini.encoder
    vae = {k: v for k, v in ckpt.configs.vae.items() if k != "scaling_factor"}
    assert vae == {k: v for k, v in mini.vae.items() if k != "scaling_factor"}


def test_demo_runs_out_of_the_box_on_the_bundled_example(tmp_path, capsys):
    for name in ("source.png", "mask.png", "exemplar.png"):
        assert (EXAMPLES / name).is_file()
    out = Path(tmp_path) / "demo"
    assert cli_main(["demo", "--out", str(out), "--steps", "4", "--scales", "0,5"]) == 0
    assert (out / "result.png").is_file() and (out / "contact_sheet.png").is_file()
    assert "wrote" in capsys.readouterr().out
