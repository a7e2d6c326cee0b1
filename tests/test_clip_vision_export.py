"""``export-clip-vision``: a checkpoint's CLIP tower in the stock clip_vision layout (the keys of
OpenAI's clip-vit-large-patch14 that ComfyUI's CLIPVisionLoader reads), never over a file.

The full-size write and ComfyUI loading it: tests/host/test_mapper_host.py.
"""

from __future__ import annotations

import torch

from exemplar_core.checkpoint import checkpoint_from_model, save_single_file
from exemplar_core.checkpoint.clip_vision import CLIP_PROJECTION_KEY, clip_vision_state_dict
from exemplar_core.checkpoint.diffusers import clip_vision_config
from exemplar_core.cli import main
from exemplar_core.config import EncoderConfig
from exemplar_core.encoder import ExemplarEncoder


def test_the_published_tower_gets_exactly_the_transformers_clip_vision_keys():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**{**clip_vision_config(EncoderConfig()), "projection_dim": 768})
    with torch.device("meta"):
        theirs = CLIPVisionModelWithProjection(config).state_dict()
        ours = clip_vision_state_dict(ExemplarEncoder(EncoderConfig()).state_dict())
    theirs = {k: tuple(v.shape) for k, v in theirs.items() if not k.endswith("position_ids")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == theirs
    assert "vision_model.encoder.layers.22.layer_norm1.weight" in ours  # ComfyUI: a ViT-L
    assert ours["vision_model.embeddings.position_embedding.weight"].shape[0] == 257  # at 224 px


def test_the_missing_clip_projection_is_written_as_zeros(tiny_model):
    out = clip_vision_state_dict(tiny_model.encoder.state_dict())
    assert out[CLIP_PROJECTION_KEY].shape == (768, tiny_model.encoder.config.width)
    assert not out[CLIP_PROJECTION_KEY].any()


def test_a_tower_comfyui_would_not_recognise_is_refused_and_nothing_written(
    tiny_model, tmp_path, capsys
):
    src = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "tiny.safetensors")
    dst = tmp_path / "clip.safetensors"
    assert main(["export-clip-vision", str(src), str(dst)]) == 2
    assert "recognises only OpenAI CLIP ViT-L/14 at 224 px" in capsys.readouterr().err
    assert not dst.exists()


def test_an_existing_destination_is_never_replaced(tiny_model, tmp_path, capsys):
    src = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "tiny.safetensors")
    dst = tmp_path / "clip-vit-large-patch14.safetensors"
    dst.write_bytes(b"the user's CLIP Vision file")
    assert main(["export-clip-vision", str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert dst.read_bytes() == b"the user's CLIP Vision file"


def test_an_output_name_without_safetensors_is_refused_before_the_checkpoint_is_read(
    tmp_path, capsys
):
    src = tmp_path / "model.ckpt"
    src.write_bytes(b"not a checkpoint: reading it would fail with another message")
    dst = tmp_path / "clip-vit-large-patch14.bin"
    assert main(["export-clip-vision", str(src), str(dst)]) == 2
    assert f"{dst} must end in .safetensors" in capsys.readouterr().err
    assert not dst.exists()
