"""Full-size key sets without downloads: meta-device modules at the published sizes.

Every key is mapped with the right shape and none is left over, in both directions, and the
parameter counts are the published ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from exemplar_core import checkpoint
from exemplar_core.checkpoint import arch, keymap
from exemplar_core.checkpoint.diffusers import clip_vision_config
from exemplar_core.checkpoint.official import split_official
from exemplar_core.config import EncoderConfig
from exemplar_core.encoder import ExemplarEncoder
from exemplar_core.model import SD1_UNET_CONFIG, SD1_VAE_CONFIG, ModelConfigs, build_unet, build_vae


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def numel(state: dict[str, torch.Tensor]) -> int:
    return sum(math.prod(v.shape) for v in state.values())


@pytest.fixture(scope="module")
def diffusers_parts():
    from diffusers.pipelines.deprecated.paint_by_example.image_encoder import (
        PaintByExampleImageEncoder,
    )
    from transformers import CLIPVisionConfig, CLIPVisionModel

    # openai/clip-vit-large-patch14 vision tower
    clip = CLIPVisionConfig(**clip_vision_config(EncoderConfig()))
    with torch.device("meta"):
        return {
            "unet": build_unet(SD1_UNET_CONFIG).state_dict(),
            "vae": build_vae(SD1_VAE_CONFIG).state_dict(),
            "clip": CLIPVisionModel(clip).state_dict(),
            "image_encoder": PaintByExampleImageEncoder(clip).state_dict(),
            "ours": ExemplarEncoder(EncoderConfig()).state_dict(),
            "clip_config": clip.to_dict(),
        }


@pytest.fixture(scope="module")
def official(diffusers_parts) -> dict[str, torch.Tensor]:
    """The official key set, synthesized from the tables (meta tensors)."""
    ckpt = checkpoint.PbECheckpoint(
        unet=keymap.unet_diffusers_to_ldm(diffusers_parts["unet"], SD1_UNET_CONFIG),
        vae=keymap.vae_diffusers_to_ldm(diffusers_parts["vae"], SD1_VAE_CONFIG),
        encoder=dict(diffusers_parts["ours"]),
        configs=ModelConfigs.published(),
    )
    return checkpoint.official_state_dict(ckpt)


def test_unet_keys_map_both_ways_with_shapes(diffusers_parts):
    unet = diffusers_parts["unet"]
    ldm = keymap.unet_diffusers_to_ldm(unet, SD1_UNET_CONFIG)
    assert len(ldm) == len(unet) == 686
    assert shapes(keymap.unet_ldm_to_diffusers(ldm, SD1_UNET_CONFIG)) == shapes(unet)
    assert ldm["input_blocks.0.0.weight"].shape == (320, 9, 3, 3)
    assert ldm["output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert numel(ldm) == 859_535_364
    assert arch.unet_config_from_ldm(ldm) == SD1_UNET_CONFIG


def test_vae_keys_map_both_ways_with_shapes(diffusers_parts):
    vae = diffusers_parts["vae"]
    ldm = keymap.vae_diffusers_to_ldm(vae, SD1_VAE_CONFIG)
    assert len(ldm) == len(vae)
    assert shapes(keymap.vae_ldm_to_diffusers(ldm, SD1_VAE_CONFIG)) == shapes(vae)
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert numel(ldm) == 83_653_863
    assert arch.vae_config_from_ldm(ldm) == SD1_VAE_CONFIG


@pytest.mark.parametrize("level", [False, True], ids=["transformers5", "transformers4"])
def test_clip_vit_l14_maps_onto_the_open_clip_tower(diffusers_parts, level):
    clip = dict(diffusers_parts["clip"])
    if level:  # transformers 4 keys, with the persistent position_ids buffer of 4.19
        clip = {f"vision_model.{k}": v for k, v in clip.items()}
        clip["vision_model.embeddings.position_ids"] = torch.empty(1, 257, device="meta")
    tower = {
        k.removeprefix("tower."): v
        for k, v in diffusers_parts["ours"].items()
        if k.startswith("tower.")
    }
    mapped = keymap.clip_transformers_to_open_clip(clip)
    assert shapes(mapped) == shapes(tower)
    assert numel(mapped) == 303_179_776
    back = keymap.clip_open_clip_to_transformers(tower, vision_model_level=level)
    expected = {k: v for k, v in clip.items() if not k.endswith("position_ids")}
    assert shapes(back) == shapes(expected)


def test_diffusers_image_encoder_maps_onto_ours(diffusers_parts):
    theirs, ours = diffusers_parts["image_encoder"], diffusers_parts["ours"]
    mapped = keymap.encoder_from_diffusers(theirs)
    assert shapes(mapped) == shapes(ours)
    assert numel(mapped) == 366_950_912
    assert shapes(keymap.encoder_to_diffusers(ours, vision_model_level=False)) == shapes(theirs)
    config = arch.encoder_config_from_clip_config(diffusers_parts["clip_config"], mapped)
    assert config == EncoderConfig()


def test_official_key_set_has_the_published_names_and_sizes(official):
    assert official["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 9, 3, 3)
    assert official["first_stage_model.decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    prefix = "cond_stage_model.transformer.vision_model."
    assert official[prefix + "encoder.layers.23.self_attn.q_proj.weight"].shape == (1024, 1024)
    assert official[prefix + "embeddings.position_embedding.weight"].shape == (257, 1024)
    assert official["cond_stage_model.mapper.resblocks.4.attn.c_qkv.weight"].shape == (3072, 1024)
    assert official["cond_stage_model.final_ln.weight"].shape == (1024,)
    assert official["proj_out.weight"].shape == (768, 1024)
    assert official["learnable_vector"].shape == (1, 1, 768)
    mapper = {k: v for k, v in official.items() if k.startswith("cond_stage_model.mapper.")}
    assert numel(mapper) == 62_981_120
    assert numel(official) == 1_310_140_139


def test_official_key_set_reads_back_as_the_published_model(official):
    state = dict(official)
    state.update({name: torch.empty(1000, device="meta") for name in ("betas", "alphas_cumprod")})
    state["cond_stage_model.transformer.vision_model.embeddings.position_ids"] = torch.empty(
        1, 257, dtype=torch.int64, device="meta"
    )
    ckpt = split_official(state, Path("model.ckpt"))
    assert ckpt.configs == ModelConfigs.published()
    counts = ckpt.parameter_counts()
    assert counts["encoder.trained"] == 62_981_120 + 2_048 + 787_200 + 768
    assert counts["total"] == 1_310_140_139


@pytest.mark.host
def test_comfyui_detects_the_single_file_unet_as_sd15_inpainting(official, comfy):
    import comfy.model_detection

    unet = {k: v for k, v in official.items() if k.startswith("model.diffusion_model.")}
    config = comfy.model_detection.model_config_from_unet(unet, "model.diffusion_model.")
    assert type(config).__name__ == "SD15"
    assert config.unet_config["in_channels"] == 9
