"""Key-mapping tables, both directions, for tiny and unusual SD1-family sizes."""

from __future__ import annotations

import pytest
import torch

from exemplar_core.checkpoint import arch, keymap
from exemplar_core.checkpoint.diffusers import clip_vision_config
from exemplar_core.config import EncoderConfig
from exemplar_core.encoder import ExemplarEncoder
from exemplar_core.model import SD1_UNET_CONFIG, SD1_VAE_CONFIG, ModelConfigs, build_unet, build_vae

TINY = ModelConfigs.tiny()
# Attention only on the deeper levels, 3 levels, 2 res blocks, linear projections, depth 2.
ODD_UNET = {
    "sample_size": 64,
    "in_channels": 9,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 96],
    "layers_per_block": 2,
    "cross_attention_dim": 16,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "transformer_layers_per_block": 2,
    "use_linear_projection": True,
}


def _random_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=gen) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("config", [TINY.unet, ODD_UNET], ids=["tiny", "odd"])
def test_unet_round_trip_diffusers_ldm_diffusers_is_identity(config):
    state = _random_state(build_unet(config))
    ldm = keymap.unet_diffusers_to_ldm(state, config)
    back = keymap.unet_ldm_to_diffusers(ldm, config)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert "input_blocks.0.0.weight" in ldm and "out.2.weight" in ldm


@pytest.mark.parametrize("config", [TINY.unet, ODD_UNET], ids=["tiny", "odd"])
def test_unet_config_is_read_back_from_ldm_shapes(config):
    with torch.device("meta"):
        unet = build_unet(config)
    ldm = keymap.unet_diffusers_to_ldm(unet.state_dict(), config)
    derived = arch.unet_config_from_ldm(
        ldm, attention_head_dim=config["attention_head_dim"], sample_size=config["sample_size"]
    )
    assert derived == config


def test_unet_ldm_names_follow_the_official_layout():
    rules = {r.diffusers: r.ldm for r in keymap.unet_rules(SD1_UNET_CONFIG)}
    assert rules["down_blocks.1.resnets.0."] == "input_blocks.4.0."
    assert rules["down_blocks.2.downsamplers.0.conv."] == "input_blocks.9.0.op."
    assert rules["up_blocks.1.attentions.2."] == "output_blocks.5.1."
    assert rules["up_blocks.0.upsamplers.0.conv."] == "output_blocks.2.1.conv."
    assert rules["up_blocks.1.upsamplers.0.conv."] == "output_blocks.5.2.conv."
    assert rules["mid_block.attentions.0."] == "middle_block.1."


def test_vae_round_trip_and_mid_attention_reshape():
    state = _random_state(build_vae(TINY.vae))
    ldm = keymap.vae_diffusers_to_ldm(state, TINY.vae)
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)
    assert ldm["decoder.mid.attn_1.proj_out.weight"].shape == (32, 32, 1, 1)
    assert ldm["encoder.mid.attn_1.norm.weight"].shape == (32,)
    # LDM numbers decoder levels from the bottom, diffusers numbers up_blocks from the top.
    assert torch.equal(
        ldm["decoder.up.3.block.0.conv1.weight"],
        state["decoder.up_blocks.0.resnets.0.conv1.weight"],
    )
    assert torch.equal(
        ldm["decoder.up.1.upsample.conv.weight"],
        state["decoder.up_blocks.2.upsamplers.0.conv.weight"],
    )
    back = keymap.vae_ldm_to_diffusers(ldm, TINY.vae)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert arch.vae_config_from_ldm(ldm, sample_size=64) == TINY.vae


def test_vae_reads_pre_0_14_diffusers_attention_names():
    state = _random_state(build_vae(TINY.vae))
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in state.items():
        for new, legacy in renames.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        old[key] = value
    assert keymap.vae_diffusers_to_ldm(old, TINY.vae).keys() == (
        keymap.vae_diffusers_to_ldm(state, TINY.vae).keys()
    )


def test_published_vae_config_is_read_back_exactly():
    with torch.device("meta"):
        vae = build_vae(SD1_VAE_CONFIG)
    ldm = keymap.vae_diffusers_to_ldm(vae.state_dict(), SD1_VAE_CONFIG)
    assert arch.vae_config_from_ldm(ldm) == SD1_VAE_CONFIG


def test_left_over_keys_are_named():
    state = _random_state(build_unet(TINY.unet))
    state["add_embedding.linear_1.weight"] = torch.zeros(1)
    with pytest.raises(keymap.KeyMappingError, match="add_embedding.linear_1.weight"):
        keymap.unet_diffusers_to_ldm(state, TINY.unet)


def test_unet_config_outside_the_sd1_family_is_refused():
    with pytest.raises(keymap.KeyMappingError, match="class_embed_type"):
        keymap.unet_rules({**TINY.unet, "class_embed_type": "timestep"})
    with pytest.raises(keymap.KeyMappingError, match="block types"):
        keymap.unet_rules({**TINY.unet, "down_block_types": ["SimpleCrossAttnDownBlock2D"] * 2})


def test_ldm_unet_kwargs_match_the_official_yaml():
    kwargs = arch.ldm_unet_kwargs(SD1_UNET_CONFIG)
    assert kwargs["model_channels"] == 320
    assert kwargs["channel_mult"] == [1, 2, 4, 4]
    assert kwargs["num_res_blocks"] == [2, 2, 2, 2]
    assert kwargs["transformer_depth"] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert kwargs["transformer_depth_output"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert (kwargs["num_heads"], kwargs["num_head_channels"]) == (8, -1)
    assert (kwargs["in_channels"], kwargs["context_dim"]) == (9, 768)
    assert kwargs["use_linear_in_transformer"] is False


def test_ldm_vae_ddconfig_matches_the_official_yaml():
    dd = arch.ldm_vae_ddconfig(SD1_VAE_CONFIG)
    assert dd["ch"] == 128 and dd["ch_mult"] == [1, 2, 4, 4]
    assert dd["num_res_blocks"] == 2 and dd["z_channels"] == 4 and dd["embed_dim"] == 4
    assert dd["double_z"] is True and dd["attn_resolutions"] == []


def test_per_level_head_counts_become_a_head_width():
    config = {**TINY.unet, "attention_head_dim": [4, 8]}
    assert arch.ldm_unet_kwargs(config)["num_head_channels"] == 8
    with pytest.raises(keymap.KeyMappingError, match="head widths"):
        arch.ldm_unet_kwargs({**ODD_UNET, "attention_head_dim": [1, 2, 2]})


# ------------------------------------------------------------------------------------------
# CLIP tower and mapper
# ------------------------------------------------------------------------------------------


def _tiny_encoder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(ExemplarEncoder(TINY.encoder).state_dict())


def test_clip_qkv_are_concatenated_in_q_k_v_order():
    ours = {
        k.removeprefix("tower."): v
        for k, v in _tiny_encoder_state().items()
        if k.startswith("tower.")
    }
    hf = keymap.clip_open_clip_to_transformers(ours, vision_model_level=False)
    fused = ours["transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(hf["encoder.layers.1.self_attn.q_proj.weight"], fused[:32])
    assert torch.equal(hf["encoder.layers.1.self_attn.k_proj.weight"], fused[32:64])
    assert torch.equal(hf["encoder.layers.1.self_attn.v_proj.weight"], fused[64:])
    assert torch.equal(hf["embeddings.patch_embedding.weight"], ours["conv1.weight"])
    assert torch.equal(hf["pre_layrnorm.weight"], ours["ln_pre.weight"])


@pytest.mark.parametrize("level", [True, False], ids=["transformers4", "transformers5"])
def test_clip_tower_loads_with_or_without_vision_model_level(level):
    ours = {
        k.removeprefix("tower."): v
        for k, v in _tiny_encoder_state().items()
        if k.startswith("tower.")
    }
    hf = keymap.clip_open_clip_to_transformers(ours, vision_model_level=level)
    assert all(k.startswith("vision_model.") == level for k in hf)
    hf["vision_model.embeddings.position_ids" if level else "embeddings.position_ids"] = (
        torch.arange(17)[None]
    )
    back = keymap.clip_transformers_to_open_clip(hf)
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)


def test_clip_tower_matches_transformers_numerically():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = EncoderConfig(image_size=32, patch_size=8, width=64, layers=2, heads=2, out_dim=32)
    torch.manual_seed(0)
    ours = ExemplarEncoder(config).eval()
    hf = CLIPVisionModel(CLIPVisionConfig(**clip_vision_config(config))).eval()
    tower = {
        k.removeprefix("tower."): v for k, v in ours.state_dict().items() if k.startswith("tower.")
    }
    hf_state = keymap.clip_open_clip_to_transformers(tower, vision_model_level=False)
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.pooled(pixels), hf(pixels).pooler_output, rtol=1e-5, atol=1e-5
        )


def test_mapper_c_qkv_splits_into_to_q_to_k_to_v_and_back():
    state = _tiny_encoder_state()
    mapper = {k: v for k, v in state.items() if k.startswith("mapper.")}
    theirs = keymap.apply_fused_rules(mapper, keymap.mapper_rules(2), "to_theirs", "mapper")
    c_qkv = mapper["mapper.resblocks.1.attn.c_qkv.bias"]
    assert torch.equal(theirs["mapper.blocks.1.attn1.to_v.bias"], c_qkv[64:])
    assert torch.equal(
        theirs["mapper.blocks.0.norm3.weight"], mapper["mapper.resblocks.0.ln_2.weight"]
    )
    assert torch.equal(
        theirs["mapper.blocks.0.ff.net.2.weight"], mapper["mapper.resblocks.0.mlp.c_proj.weight"]
    )
    back = keymap.apply_fused_rules(theirs, keymap.mapper_rules(2), "to_ours", "mapper")
    assert all(torch.equal(back[k], mapper[k]) for k in mapper) and back.keys() == mapper.keys()


def test_encoder_round_trips_through_official_and_diffusers_names():
    state = _tiny_encoder_state()
    official = keymap.encoder_to_official(state)
    assert "cond_stage_model.transformer.vision_model.post_layernorm.weight" in official
    assert "cond_stage_model.mapper.resblocks.1.attn.c_qkv.weight" in official
    assert "cond_stage_model.final_ln.weight" in official and "learnable_vector" in official
    tower = {
        k.removeprefix("cond_stage_model.transformer."): v
        for k, v in official.items()
        if k.startswith("cond_stage_model.transformer.")
    }
    mapper = {
        k.removeprefix("cond_stage_model."): v
        for k, v in official.items()
        if k.startswith("cond_stage_model.mapper.")
    }
    head = {
        k: v
        for k, v in official.items()
        if k
        in (
            "cond_stage_model.final_ln.weight",
            "cond_stage_model.final_ln.bias",
            "proj_out.weight",
            "proj_out.bias",
            "learnable_vector",
        )
    }
    back = keymap.encoder_from_official(tower, mapper, head)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    diffusers = keymap.encoder_to_diffusers(state)
    assert "uncond_vector" in diffusers and "final_layer_norm.bias" in diffusers
    back = keymap.encoder_from_diffusers(diffusers)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_encoder_config_is_read_from_weights_and_from_clip_config():
    state = _tiny_encoder_state()
    derived = arch.encoder_config_from_weights(state, heads=2)
    assert derived == EncoderConfig(
        **{
            **TINY.encoder.to_dict(),
            "backbone": "custom-vit",
            "mean": TINY.encoder.mean,
            "std": TINY.encoder.std,
        }
    )
    assert arch.encoder_config_from_weights(state).heads == 1  # width 32 // 64, at least 1
    clip = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "hidden_act": "gelu",
    }
    from_clip = arch.encoder_config_from_clip_config(clip, state)
    assert from_clip.heads == 2 and from_clip.quick_gelu is False
    with pytest.raises(keymap.KeyMappingError, match="num_hidden_layers=3"):
        arch.encoder_config_from_clip_config({**clip, "num_hidden_layers": 3}, state)


# ------------------------------------------------------------------------------------------
# ComfyUI's own LDM modules accept the mapped weights (needs COMFYUI_PATH)
# ------------------------------------------------------------------------------------------


def _ldm_classes(comfy):
    """ComfyUI's UNet and VAE classes and its plain operations (``comfy``: the fixture)."""
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel, AutoencoderKL, comfy.ops.disable_weight_init


@pytest.mark.host
@pytest.mark.parametrize(
    "config", [TINY.unet, {**ODD_UNET, "transformer_layers_per_block": 1}], ids=["tiny", "odd"]
)
def test_comfyui_unet_built_from_ldm_kwargs_matches_diffusers(config, comfy):
    UNetModel, _, ops = _ldm_classes(comfy)
    torch.manual_seed(0)
    unet = build_unet(config).eval()
    comfy_unet = UNetModel(**arch.ldm_unet_kwargs(config), operations=ops).eval()
    comfy_unet.load_state_dict(keymap.unet_diffusers_to_ldm(unet.state_dict(), config), strict=True)
    x = torch.randn(1, 9, 16, 16)
    t = torch.tensor([300.0])
    context = torch.randn(1, 1, config["cross_attention_dim"])
    with torch.no_grad():
        ours = unet(x, t, encoder_hidden_states=context).sample
        theirs = comfy_unet(x, t, context=context)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.host
def test_comfyui_vae_built_from_ddconfig_matches_diffusers(comfy):
    _, AutoencoderKL, _ = _ldm_classes(comfy)
    torch.manual_seed(0)
    vae = build_vae(TINY.vae).eval()
    ddconfig = arch.ldm_vae_ddconfig(TINY.vae)
    comfy_vae = AutoencoderKL(embed_dim=ddconfig.pop("embed_dim"), ddconfig=ddconfig).eval()
    comfy_vae.load_state_dict(keymap.vae_diffusers_to_ldm(vae.state_dict(), TINY.vae), strict=True)
    latent = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            comfy_vae.decode(latent), vae.decode(latent).sample, rtol=1e-4, atol=1e-5
        )
