"""Parity with the reference implementation: diffusers' Paint-by-Example encoder and pipeline."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from diffusers.pipelines.deprecated.paint_by_example import PaintByExamplePipeline  # noqa: E402
from diffusers.pipelines.deprecated.paint_by_example.image_encoder import (  # noqa: E402
    PaintByExampleImageEncoder,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig  # noqa: E402

from exemplar_core.checkpoint.diffusers import clip_vision_config  # noqa: E402
from exemplar_core.checkpoint.keymap import encoder_from_diffusers, encoder_to_diffusers  # noqa: E402
from exemplar_core.editor import Editor, EditSettings, make_scheduler  # noqa: E402
from exemplar_core.encoder import ExemplarEncoder  # noqa: E402
from exemplar_core.model import ModelConfigs, PaintByExampleModel  # noqa: E402
from exemplar_core.preprocess import preprocess_exemplar  # noqa: E402

# The tiny encoder with 4 tower layers: diffusers' mapper has (num_hidden_layers + 1) // 5
# blocks, so 4 layers give 1 mapper block.
OUR_CFG = dataclasses.replace(ModelConfigs.tiny().encoder, layers=4, mapper_layers=1)
CLIP_CFG = CLIPVisionConfig(**clip_vision_config(OUR_CFG))


def _random_diffusers_encoder(seed: int = 0) -> PaintByExampleImageEncoder:
    torch.manual_seed(seed)
    enc = PaintByExampleImageEncoder(CLIP_CFG).eval()
    with torch.no_grad():
        for p in enc.parameters():  # no zero-initialised part may hide a mapping error
            p.normal_(0, 0.2)
    return enc


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def test_encoder_matches_diffusers_image_encoder_with_the_same_weights():
    theirs = _random_diffusers_encoder()
    ours = ExemplarEncoder(OUR_CFG).eval()
    ours.load_state_dict(encoder_from_diffusers(theirs.state_dict()), strict=True)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, expected_uncond = theirs(pixels, return_uncond_vector=True)
        got = ours(pixels)
    assert got.shape == expected.shape == (3, 1, 32)
    assert (got - expected).abs().max() <= 1e-5
    assert torch.equal(ours.unconditional(1), expected_uncond)


def test_encoder_weights_map_back_to_diffusers_exactly():
    theirs = _random_diffusers_encoder(1)
    ours = ExemplarEncoder(OUR_CFG)
    ours.load_state_dict(encoder_from_diffusers(theirs.state_dict()))
    back = encoder_to_diffusers(ours.state_dict(), vision_model_level=False)
    reference = theirs.state_dict()
    reference = {k.replace("model.vision_model.", "model."): v for k, v in reference.items()}
    reference = {k: v for k, v in reference.items() if not k.endswith("position_ids")}
    assert back.keys() == reference.keys()
    assert all(torch.equal(back[k], reference[k]) for k in reference)


def _parity_setup():
    torch.manual_seed(7)
    base = ModelConfigs.tiny()
    configs = ModelConfigs(base.unet, base.vae, OUR_CFG)
    model = PaintByExampleModel(configs).eval()
    theirs = PaintByExampleImageEncoder(CLIP_CFG).eval()
    level = any(k.startswith("model.vision_model.") for k in theirs.state_dict())  # transformers 4
    missing, unexpected = theirs.load_state_dict(
        encoder_to_diffusers(model.encoder.state_dict(), vision_model_level=level), strict=False
    )
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    g = torch.Generator().manual_seed(3)
    source = torch.rand(1, 3, 64, 64, generator=g)
    exemplar = torch.rand(1, 3, 32, 32, generator=g)  # square, at the encoder's size
    return model, theirs, source, exemplar


def _pipeline(model, image_encoder, scheduler: str) -> PaintByExamplePipeline:
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return PaintByExamplePipeline(
        vae=model.vae,
        image_encoder=image_encoder,
        unet=model.unet,
        scheduler=make_scheduler(scheduler),
        safety_checker=None,
        feature_extractor=processor,
        requires_safety_checker=False,
    )


def _run_both(mask: torch.Tensor, mask_resize: str, steps: int = 4):
    model, theirs, source, exemplar = _parity_setup()
    pipe = _pipeline(model, theirs, "ddim")
    pipe.set_progress_bar_config(disable=True)
    pixels = preprocess_exemplar(exemplar, OUR_CFG)
    with torch.no_grad():
        reference = pipe(
            example_image=pixels,
            image=source * 2 - 1,
            mask_image=mask,
            num_inference_steps=steps,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(11),
            output_type="np",
        ).images[0]
    editor = Editor(model, device="cpu", progress=False)
    settings = EditSettings(
        steps=steps,
        similarity=5.0,
        seed=11,
        scheduler="ddim",
        size=64,
        whole_image=True,
        paste_back=False,
        mask_resize=mask_resize,
    )
    ours = editor.edit(source, mask, exemplar, settings).image[0].permute(1, 2, 0).numpy()
    return ours, reference


def test_editor_matches_diffusers_pipeline_on_grid_aligned_mask():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 8:40] = 1  # aligned to the 8-px latent grid
    ours, reference = _run_both(mask, "bilinear")
    assert ours.shape == reference.shape == (64, 64, 3)
    assert _psnr(ours, reference) >= 40.0


def test_mask_downsampling_is_the_documented_difference_from_diffusers():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:44, 12:52] = 1  # edges fall inside latent pixels
    nearest, reference = _run_both(mask, "nearest")
    bilinear, _ = _run_both(mask, "bilinear")
    assert _psnr(nearest, reference) >= 40.0, "nearest is diffusers' behaviour"
    assert _psnr(bilinear, reference) < _psnr(nearest, reference), "bilinear is the official one"


def test_exemplar_center_crop_mode_matches_diffusers_feature_extractor_and_squash_does_not():
    g = torch.Generator().manual_seed(5)
    wide = torch.rand(1, 3, 40, 120, generator=g)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=3
    )
    array = (wide[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    theirs = processor(images=array, return_tensors="pt").pixel_values
    crop = preprocess_exemplar(wide, OUR_CFG, mode="center_crop")
    squash = preprocess_exemplar(wide, OUR_CFG, mode="squash")
    err_crop = (crop - theirs).abs().mean().item()
    err_squash = (squash - theirs).abs().mean().item()
    assert err_crop < 0.1 < err_squash
