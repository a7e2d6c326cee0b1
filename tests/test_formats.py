"""Reading and writing every checkpoint format with a tiny model; bad inputs fail clearly."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hostile import RunsCode
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from exemplar_core import checkpoint
from exemplar_core.checkpoint import CheckpointError, keymap
from exemplar_core.checkpoint.container import prepare_tensors
from exemplar_core.checkpoint.diffusers import clip_vision_config
from exemplar_core.config import EncoderConfig
from exemplar_core.model import ModelConfigs, PaintByExampleModel

# A tiny model every format can describe exactly: the official layout cannot store heads (the
# reader assumes 8 UNet heads and width // 64 tower heads), diffusers builds (layers + 1) // 5
# mapper blocks, and the official reader assumes the published sample sizes.
ENCODER = EncoderConfig(
    backbone="custom-vit",
    image_size=32,
    patch_size=8,
    width=64,
    layers=4,
    heads=1,
    mapper_layers=1,
    out_dim=32,
)
_TINY = ModelConfigs.tiny()
CONFIGS = ModelConfigs(
    unet={**_TINY.unet, "attention_head_dim": 8, "sample_size": 64},
    vae={**_TINY.vae, "sample_size": 512},
    encoder=ENCODER,
)
DDPM_BUFFERS = ("betas", "alphas_cumprod", "posterior_variance", "lvlb_weights")


def clip_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**clip_vision_config(ENCODER))


def outputs(model: PaintByExampleModel) -> dict[str, torch.Tensor]:
    """UNet, VAE and encoder outputs on fixed inputs."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 8, 8, generator=gen)
    cond = torch.randn(2, 1, 32, generator=gen)
    image = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        return {
            "unet": model.predict_noise(
                x[:, :4], torch.tensor([5, 700]), x[:, 4:8], x[:, 8:], cond
            ),
            "vae_encode": model.encode_latent(image, sample=False),
            "vae_decode": model.decode_latent(torch.randn(1, 4, 4, 4, generator=gen)),
            "encoder": model.encoder(pixels),
            "uncond": model.encoder.unconditional(2),
        }


@pytest.fixture(scope="module")
def model() -> PaintByExampleModel:
    torch.manual_seed(0)
    return PaintByExampleModel(CONFIGS).eval()


@pytest.fixture(scope="module")
def reference(model) -> dict[str, torch.Tensor]:
    return outputs(model)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory) -> dict[str, Path]:
    """The same weights written in every layout."""
    from diffusers.pipelines.deprecated.paint_by_example.image_encoder import (
        PaintByExampleImageEncoder,
    )

    root = tmp_path_factory.mktemp("formats")
    ckpt = checkpoint.checkpoint_from_model(model, {"training_steps": "12"})
    official = checkpoint.official_state_dict(ckpt)
    paths: dict[str, Path] = {}

    # (a) official Lightning .ckpt: a plain dict saved with torch.save, DDPM buffers included.
    buffers = {name: torch.linspace(0, 1, 1000) for name in DDPM_BUFFERS}
    paths["official-ckpt"] = root / "model.ckpt"
    torch.save(
        {"state_dict": {**official, **buffers}, "epoch": 3, "global_step": 1200},
        paths["official-ckpt"],
    )
    # (a) the same keys as .safetensors, transformers-5 CLIP names (no vision_model. level).
    flat = {k.replace("transformer.vision_model.", "transformer."): v for k, v in official.items()}
    paths["official-safetensors"] = root / "model.safetensors"
    save_file({k: v.contiguous().clone() for k, v in flat.items()}, paths["official-safetensors"])

    # (b) diffusers folder written by diffusers/transformers themselves (transformers 5 keys).
    folder = root / "diffusers"
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    image_encoder = PaintByExampleImageEncoder(clip_config())
    image_encoder.load_state_dict(keymap.encoder_to_diffusers(ckpt.encoder, False), strict=True)
    image_encoder.save_pretrained(folder / "image_encoder")
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "PaintByExamplePipeline", "unet": ["diffusers", "x"]})
    )
    paths["diffusers"] = folder
    # (b) transformers-4 keys (model.vision_model.*, position_ids) in a pickled pytorch_model.bin.
    folder_v4 = root / "diffusers_v4"
    shutil.copytree(folder, folder_v4)
    weights = load_file(folder_v4 / "image_encoder" / "model.safetensors")
    v4 = {
        k.replace("model.", "model.vision_model.", 1) if k.startswith("model.") else k: v
        for k, v in weights.items()
    }
    v4["model.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    (folder_v4 / "image_encoder" / "model.safetensors").unlink()
    torch.save(v4, folder_v4 / "image_encoder" / "pytorch_model.bin")
    paths["diffusers-v4-bin"] = folder_v4
    # (b) our own diffusers writer.
    paths["diffusers-written"] = checkpoint.save_diffusers(ckpt, root / "written")

    # (c) single file.
    paths["single-file"] = checkpoint.save_single_file(ckpt, root / "pbe.safetensors")
    return paths


ALL_FORMATS = (
    "official-ckpt",
    "official-safetensors",
    "diffusers",
    "diffusers-v4-bin",
    "diffusers-written",
    "single-file",
)


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_every_format_loads_to_identical_outputs(files, reference, name):
    loaded = checkpoint.load_model(files[name])
    got = outputs(loaded)
    for key, expected in reference.items():
        assert torch.equal(got[key], expected), f"{name}: {key} differs"


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_every_format_reads_back_the_architecture(files, name):
    ckpt = checkpoint.load_checkpoint(files[name])
    assert ckpt.configs == CONFIGS
    expected = "diffusers" if name.startswith("diffusers") else name
    assert ckpt.format == expected


def test_diffusers_encoder_and_ours_compute_the_same_embedding(files, model):
    from diffusers.pipelines.deprecated.paint_by_example.image_encoder import (
        PaintByExampleImageEncoder,
    )

    theirs = PaintByExampleImageEncoder.from_pretrained(files["diffusers"] / "image_encoder").eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        embedding, uncond = theirs(pixels, return_uncond_vector=True)
        ours = checkpoint.load_model(files["diffusers"]).encoder(pixels)
    torch.testing.assert_close(ours, embedding, rtol=1e-5, atol=1e-5)
    assert torch.equal(checkpoint.load_model(files["diffusers"]).encoder.learnable_vector, uncond)


def test_single_file_layout_and_metadata(files, model):
    with safe_open(str(files["single-file"]), framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata()
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.encoder.conv_in.weight" in keys
    assert "exemplar_encoder.tower.conv1.weight" in keys
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "exemplar_encoder"}
    assert metadata["format"] == "paint-by-example-comfy"
    assert metadata["format_version"] == "1"
    assert json.loads(metadata["unet_config"]) == CONFIGS.unet
    assert json.loads(metadata["vae_config"]) == CONFIGS.vae
    assert EncoderConfig.from_dict(json.loads(metadata["encoder_config"])) == ENCODER
    assert metadata["training_steps"] == "12"
    assert all(isinstance(v, str) for v in metadata.values())


def test_single_file_keeps_extra_metadata_and_coerces_non_strings(model, tmp_path):
    ckpt = checkpoint.checkpoint_from_model(model, {"steps": 5, "note": "hello"})  # type: ignore[dict-item]
    path = checkpoint.save_single_file(ckpt, tmp_path / "m.safetensors")
    loaded = checkpoint.load_checkpoint(path)
    assert loaded.metadata == {"steps": "5", "note": "hello"}


def test_fp16_single_file_casts_floating_tensors(model, tmp_path):
    ckpt = checkpoint.checkpoint_from_model(model)
    path = checkpoint.save_single_file(ckpt, tmp_path / "half.safetensors", dtype="fp16")
    loaded = checkpoint.load_checkpoint(path)
    assert loaded.dtypes() == {"unet": "float16", "vae": "float16", "encoder": "float16"}
    prepared = prepare_tensors({"ids": torch.arange(3), "w": torch.ones(2)}, torch.float16)
    assert prepared["ids"].dtype == torch.int64 and prepared["w"].dtype == torch.float16


def test_writer_refuses_to_overwrite_the_source_file(files, tmp_path):
    source = tmp_path / "source.safetensors"
    shutil.copy(files["single-file"], source)
    before = source.read_bytes()
    ckpt = checkpoint.load_checkpoint(source)
    with pytest.raises(CheckpointError, match="file being converted"):
        checkpoint.save_single_file(ckpt, source)
    assert source.read_bytes() == before


def test_writer_is_atomic_and_leaves_no_temp_files(model, tmp_path):
    ckpt = checkpoint.checkpoint_from_model(model)
    checkpoint.save_single_file(ckpt, tmp_path / "a.safetensors")
    broken = checkpoint.checkpoint_from_model(model)
    broken.unet = {**broken.unet, "bad": torch.empty(2, device="meta")}
    with pytest.raises(CheckpointError):
        checkpoint.save_single_file(broken, tmp_path / "a.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]
    assert checkpoint.load_checkpoint(tmp_path / "a.safetensors").configs == CONFIGS


def test_lazy_load_reads_shapes_without_data(files):
    ckpt = checkpoint.load_checkpoint(files["single-file"], lazy=True)
    assert all(t.device.type == "meta" for t in ckpt.unet.values())
    assert (
        ckpt.parameter_counts()
        == checkpoint.load_checkpoint(files["single-file"]).parameter_counts()
    )


def test_detect_format_names_each_layout(files):
    assert checkpoint.detect_format(files["official-ckpt"]) == "official-ckpt"
    assert checkpoint.detect_format(files["official-safetensors"]) == "official-safetensors"
    assert checkpoint.detect_format(files["diffusers"]) == "diffusers"
    assert checkpoint.detect_format(files["single-file"]) == "single-file"


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------

MARKER = "pbe_pickle_side_effect"


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / MARKER
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {"learnable_vector": torch.zeros(1)}, "cb": RunsCode(str(marker))}, path
    )
    with pytest.raises(CheckpointError, match="pickled Python objects") as err:
        checkpoint.load_checkpoint(path)
    assert "safetensors" in str(err.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / MARKER
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": RunsCode(str(marker))}, f)
    with pytest.raises(CheckpointError):
        checkpoint.load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "layout, suffix",
    [("single-file", ".safetensors"), ("official-ckpt", ".ckpt")],
    ids=["safetensors", "ckpt"],
)
def test_a_truncated_file_is_reported(files, tmp_path, layout, suffix):
    data = files[layout].read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load_checkpoint(path)


def test_garbage_files_are_reported(tmp_path):
    for name in ("junk.safetensors", "junk.ckpt"):
        path = tmp_path / name
        path.write_bytes(b"\x00not a checkpoint" * 10)
        with pytest.raises(CheckpointError):
            checkpoint.load_checkpoint(path)


TEXT_ENCODER_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"


def _ldm_unet_stub(in_channels: int, context: int = 768) -> dict[str, torch.Tensor]:
    prefix = "model.diffusion_model."
    return {
        prefix + "input_blocks.0.0.weight": torch.zeros(32, in_channels, 3, 3),
        prefix + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(
            32, context
        ),
        prefix + "out.2.weight": torch.zeros(4, 32, 3, 3),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(32, 3, 3, 3),
    }


@pytest.mark.parametrize(
    ("extra", "in_channels", "context", "expected"),
    [
        (
            {TEXT_ENCODER_KEY: torch.zeros(10, 8)},
            4,
            768,
            "text-to-image checkpoint .4-channel UNet, a CLIP text",
        ),
        (
            {TEXT_ENCODER_KEY: torch.zeros(10, 8)},
            9,
            768,
            "inpainting checkpoint .9-channel UNet",
        ),
        (
            {"conditioner.embedders.0.model.ln_final.weight": torch.zeros(8)},
            4,
            2048,
            "SDXL",
        ),
        ({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 8)}, 4, 2048, "SDXL"),
    ],
    ids=["sd15", "sd-inpainting", "sdxl-conditioner", "sdxl-label-emb"],
)
def test_other_models_are_named_in_the_error(tmp_path, extra, in_channels, context, expected):
    path = tmp_path / "other.safetensors"
    save_file({**_ldm_unet_stub(in_channels, context), **extra}, path)
    with pytest.raises(CheckpointError, match=expected) as err:
        checkpoint.load_checkpoint(path)
    assert "expected a Paint-by-Example checkpoint" in str(err.value)


def test_unrelated_file_lists_what_it_found(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="top-level keys: lora_unet_down.alpha"):
        checkpoint.load_checkpoint(path)


def test_pbe_checkpoint_missing_a_part_names_it(files, tmp_path):
    state = load_file(files["official-safetensors"])
    path = tmp_path / "novae.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("first_stage_model.")}, path)
    with pytest.raises(CheckpointError, match=r"lacks the VAE \(first_stage_model"):
        checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("part", ["unet", "vae", "image_encoder"])
def test_diffusers_folder_missing_a_part_names_it(files, tmp_path, part):
    folder = tmp_path / "pipe"
    shutil.copytree(files["diffusers"], folder)
    shutil.rmtree(folder / part)
    with pytest.raises(CheckpointError, match=f"without {part}/"):
        checkpoint.load_checkpoint(folder)


def test_diffusers_folder_missing_weights_names_the_file(files, tmp_path):
    folder = tmp_path / "pipe"
    shutil.copytree(files["diffusers"], folder)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        checkpoint.load_checkpoint(folder)


def test_diffusers_folder_of_another_pipeline_is_named(files, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(files["diffusers"], folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(CheckpointError, match="StableDiffusionPipeline"):
        checkpoint.load_checkpoint(folder)


def test_diffusers_config_that_contradicts_the_weights_is_reported(files, tmp_path):
    folder = tmp_path / "pipe"
    shutil.copytree(files["diffusers"], folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 64
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cross_attention_dim=64"):
        checkpoint.load_checkpoint(folder)


def test_single_file_from_a_newer_version_is_refused(files, tmp_path):
    tensors = load_file(files["single-file"])
    with safe_open(str(files["single-file"]), framework="pt") as f:
        metadata = {**f.metadata(), "format_version": "2"}
    path = tmp_path / "new.safetensors"
    save_file(tensors, path, metadata)
    with pytest.raises(CheckpointError, match="format_version '2'"):
        checkpoint.load_checkpoint(path)
