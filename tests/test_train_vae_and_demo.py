from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from exemplar_core.checkpoint import checkpoint_from_model, save_single_file
from exemplar_core.cli import main as cli_main
from exemplar_core.demo import fresh_folder
from train.vae import load_vae_weights, train_vae, vae_config


def _images(folder, count=3, size=48):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    return folder


def test_vae_stage_writes_weights_and_a_unit_variance_scaling_factor(tmp_path, umask):
    umask(0o022)
    path = train_vae(
        _images(tmp_path / "img"),
        tmp_path / "out",
        vae_config("tiny"),
        steps=2,
        batch_size=2,
        resolution=32,
        log_every=1,
    )
    assert path.stat().st_mode & 0o777 == 0o644  # the umask's mode, not safetensors' 0600
    assert [p.name for p in path.parent.iterdir()] == ["vae.safetensors"]
    config, state = load_vae_weights(path)
    assert config["block_out_channels"] == vae_config("tiny")["block_out_channels"]
    assert 0 < config["scaling_factor"] < 100
    from exemplar_core.model import build_vae

    vae = build_vae(config)
    vae.load_state_dict(state)  # strict: the file holds exactly the architecture's weights


def test_vae_stage_refuses_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        train_vae(tmp_path / "empty", tmp_path / "out", vae_config("tiny"), steps=1)


def test_mini_vae_never_normalises_single_channels():
    from exemplar_core.model import ModelConfigs

    for width in ModelConfigs.mini().vae["block_out_channels"]:
        assert width // 32 >= 2, "GroupNorm(32) over 32 channels erases absolute colour"


def test_demo_writes_result_and_contact_sheet_without_overwriting(tmp_path, tiny_model, capsys):
    ckpt = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "m.safetensors")
    args = [
        "demo",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "demo"),
        "--steps",
        "2",
        "--scales",
        "0,5",
    ]
    assert cli_main(args) == 0
    sheet = Image.open(tmp_path / "demo" / "contact_sheet.png")
    assert sheet.width == 160 * 5  # source | mask | exemplar | s=0 | s=5
    first = (tmp_path / "demo" / "result.png").read_bytes()
    assert cli_main(args) == 0
    assert (tmp_path / "demo" / "result.png").read_bytes() == first
    assert (tmp_path / "demo-2" / "result.png").exists()
    assert fresh_folder(tmp_path / "demo").name == "demo-3"
    assert "contact_sheet.png" in capsys.readouterr().out
