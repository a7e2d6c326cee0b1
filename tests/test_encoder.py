from __future__ import annotations

import pytest
import torch

from exemplar_core.config import ConfigError, EncoderConfig
from exemplar_core.encoder import (
    ExemplarEncoder,
    TowerMissingError,
    count_parameters,
    towerless_state_dict,
)
from exemplar_core.model import ModelConfigs, PaintByExampleModel


def test_published_encoder_has_the_official_parameter_counts():
    with torch.device("meta"):
        enc = ExemplarEncoder(EncoderConfig())
    assert count_parameters(enc.tower) == 303_179_776
    assert count_parameters(enc.mapper) == 62_981_120
    assert count_parameters(enc.proj_out) == 787_200
    assert count_parameters(enc) == 366_950_912  # == diffusers' PaintByExampleImageEncoder
    assert enc.learnable_vector.shape == (1, 1, 768)
    assert not hasattr(enc.tower, "proj") or enc.tower.proj is None


def test_published_unet_and_vae_have_the_official_parameter_counts():
    with torch.device("meta"):
        model = PaintByExampleModel(ModelConfigs.published())
    assert count_parameters(model.unet) == 859_535_364
    assert count_parameters(model.vae) == 83_653_863


def test_condition_is_one_token_per_exemplar(tiny_model):
    cfg = tiny_model.encoder.config
    pixels = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    out = tiny_model.encoder(pixels)
    assert out.shape == (3, 1, cfg.out_dim)
    assert tiny_model.encoder.unconditional(3).shape == (3, 1, cfg.out_dim)


def test_single_token_attention_ignores_query_and_key_weights(tiny_model):
    enc = tiny_model.encoder
    pixels = torch.randn(2, 3, enc.config.image_size, enc.config.image_size)
    before = enc(pixels)
    width = enc.config.width
    with torch.no_grad():
        for block in enc.mapper.resblocks:
            block.attn.c_qkv.weight[: 2 * width].normal_()
            block.attn.c_qkv.bias[: 2 * width].normal_()
    assert torch.allclose(enc(pixels), before, atol=1e-6)


def test_wrong_pixel_size_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="preprocess_exemplar"):
        tiny_model.encoder(torch.randn(1, 3, 20, 20))


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = EncoderConfig(width=64, heads=4, layers=3, mapper_layers=2, out_dim=32)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown keys"):
        EncoderConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="multiple of"):
        EncoderConfig(image_size=30, patch_size=8)


def test_other_open_clip_backbones_build_from_their_name():
    cfg = EncoderConfig.from_open_clip("ViT-B-16", mapper_layers=1, out_dim=768)
    assert (cfg.width, cfg.patch_size, cfg.layers, cfg.heads) == (768, 16, 12, 12)
    with torch.device("meta"):
        enc = ExemplarEncoder(cfg)
    assert enc.proj_out.weight.shape == (768, 768)
    with pytest.raises(ConfigError, match="no model config"):
        EncoderConfig.from_open_clip("not-a-model")


def test_multi_head_mapper_uses_the_official_per_head_qkv_layout():
    from exemplar_core.encoder import MapperAttention

    torch.manual_seed(0)
    attn = MapperAttention(8, heads=2)
    x = torch.randn(2, 3, 8)
    # xf.py: qkv.view(bs, n_ctx, heads, -1) then split into q, k, v of head width each
    q, k, v = torch.split(attn.c_qkv(x).view(2, 3, 2, -1), 4, dim=-1)
    weights = torch.einsum("bthc,bshc->bhts", q, k).div(2.0).softmax(-1)
    expected = attn.c_proj(torch.einsum("bhts,bshc->bthc", weights, v).reshape(2, 3, 8))
    assert torch.allclose(attn(x), expected, atol=1e-6)


def class_token_of(encoder: ExemplarEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """The tower's class token as it enters ``ln_post`` (what ComfyUI's CLIP Vision gives as
    ``last_hidden_state[:, 0]``): [B, width]."""
    seen = []
    hook = encoder.tower.ln_post.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        encoder.pooled(pixels)
    finally:
        hook.remove()
    tokens = seen[0]
    return tokens[:, 0] if tokens.ndim == 3 else tokens


def test_towerless_encoder_projects_exactly_as_the_full_one(tiny_model):
    full = tiny_model.encoder
    cfg = full.config
    towerless = ExemplarEncoder(cfg, tower=False)
    towerless.load_state_dict(towerless_state_dict(full.state_dict()), strict=True)
    pixels = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    token = class_token_of(full, pixels)
    assert torch.equal(towerless.project_class_token(token), full(pixels))
    assert torch.equal(full.project_class_token(token), full(pixels))


def test_towerless_encoder_keeps_only_the_final_layernorm_of_the_tower(tiny_model):
    towerless = ExemplarEncoder(tiny_model.encoder.config, tower=False)
    tower_keys = sorted(k for k in towerless.state_dict() if k.startswith("tower."))
    assert tower_keys == ["tower.ln_post.bias", "tower.ln_post.weight"]
    assert not towerless.has_tower and tiny_model.encoder.has_tower
    expected = set(towerless_state_dict(tiny_model.encoder.state_dict()))
    assert set(towerless.state_dict()) == expected
    size = towerless.config.image_size
    with pytest.raises(TowerMissingError, match="without its CLIP tower"):
        towerless(torch.randn(1, 3, size, size))


def test_towerless_published_encoder_saves_the_towers_1_2_gb():
    with torch.device("meta"):
        full = ExemplarEncoder(EncoderConfig())
        towerless = ExemplarEncoder(EncoderConfig(), tower=False)
    saved = count_parameters(full) - count_parameters(towerless)
    assert saved == 303_179_776 - 2 * 1024  # the tower less its final LayerNorm
    assert saved * 4 == 1_212_710_912  # bytes in fp32: the Loader's clip_tower "skip"


def test_class_token_of_the_wrong_width_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r"class token must be \[B, 32\]"):
        tiny_model.encoder.project_class_token(torch.randn(1, 64))
