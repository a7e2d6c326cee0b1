"""In-process tests of every node inside the real ComfyUI (COMFYUI_PATH), on a tiny checkpoint."""

from __future__ import annotations

import pbe_host
import pytest
import torch

NODE_IDS = [
    "PaintByExample.Loader",
    "PaintByExample.ExemplarEncode",
    "PaintByExample.MaskBezierJitter",
    "PaintByExample.InpaintSampler",
    "PaintByExample.SimilarityGuidance",
    "PaintByExample.LoraLoader",
    "PaintByExample.ExemplarMapper",
    "PaintByExample.CropForEdit",
    "PaintByExample.StitchEdit",
    "PaintByExample.CompileModel",
]
SIZE = 64


def _image(seed: int = 0, batch: int = 1, size: int = SIZE) -> torch.Tensor:
    return torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(seed))


def _mask(batch: int = 1, box=(16, 40, 20, 44), size: int = SIZE) -> torch.Tensor:
    y0, y1, x0, x1 = box
    mask = torch.zeros(batch, size, size)
    mask[:, y0:y1, x0:x1] = 1.0
    return mask


@pytest.fixture(scope="module")
def conditioning(host, loaded):
    _, _, encoder = loaded
    return host.run("PaintByExample.ExemplarEncode", encoder=encoder, exemplar=_image(7, size=40))


def _sampler_inputs(loaded, conditioning, **overrides) -> dict:
    """The Inpaint Sampler's inputs on the tiny model, the test image and mask; ``overrides``
    replace any of them."""
    model, vae, _ = loaded
    positive, negative = conditioning[:2]
    inputs = dict(
        model=model,
        vae=vae,
        positive=positive,
        negative=negative,
        image=_image(),
        mask=_mask(),
        seed=3,
        steps=2,
        resolution=SIZE,
        feather=4,
    )
    return {**inputs, **overrides}


def _sample(host, loaded, conditioning, **overrides):
    inputs = _sampler_inputs(loaded, conditioning, **overrides)
    return host.run("PaintByExample.InpaintSampler", **inputs)[:2]  # IMAGE, LATENT


# ---------------------------------------------------------------------------------- schema


def test_pack_registers_every_node_through_the_v3_entry_point(host):
    import sys

    root = sys.modules[host.package]
    assert hasattr(root, "comfy_entrypoint")
    assert not hasattr(root, "NODE_CLASS_MAPPINGS")  # V1 mappings would disable the entry point
    for node_id in NODE_IDS:
        assert node_id in host.nodes.NODE_CLASS_MAPPINGS
        assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("Paint-by-Example")


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_input_and_output_has_a_tooltip(host, node_id):
    schema = host.node(node_id).GET_SCHEMA()
    assert schema.category == "paint-by-example"
    assert len(schema.description) > 40
    for item in list(schema.inputs) + list(schema.outputs):
        assert item.tooltip, f"{node_id}: {getattr(item, 'id', item)} has no tooltip"


# ---------------------------------------------------------------------------------- loader


def test_loader_lists_models_from_an_extra_model_paths_folder(host, models_dir):
    folders = host.module("nodes.folders")
    assert pbe_host.TINY_MODEL_NAME in folders.list_models()
    assert str(models_dir) in folders.search_paths()
    assert folders.default_folder().endswith("paint_by_example")


def test_loader_reports_a_missing_model_with_the_folder_to_use(host):
    message = host.node("PaintByExample.Loader").validate_inputs(model_name="nope.safetensors")
    assert isinstance(message, str)
    assert "paint_by_example" in message and "nope.safetensors" in message
    assert "extra_model_paths.yaml" in message


def test_loader_returns_native_model_vae_and_managed_encoder(host, loaded):
    import comfy.model_patcher
    import comfy.sd

    model, vae, encoder = loaded
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert model.object_patches["concat_keys"] == ("masked_image", "mask_inverted")
    assert isinstance(vae, comfy.sd.VAE)
    assert isinstance(encoder.patcher, comfy.model_patcher.ModelPatcher)
    assert encoder.out_dim == model.model.model_config.unet_config["context_dim"]


def test_loader_weight_dtype_choice_is_applied(host):
    model, vae, encoder = host.run(
        "PaintByExample.Loader", model_name=pbe_host.TINY_MODEL_NAME, weight_dtype="bf16"
    )
    assert model.model.get_dtype() == torch.bfloat16
    assert vae.vae_dtype == torch.bfloat16
    assert encoder.dtype == torch.bfloat16


def test_loader_refuses_a_nan_learned_vector_once_at_load(host, models_dir):
    model = pbe_host.tiny_model()
    with torch.no_grad():
        model.encoder.learnable_vector.fill_(float("nan"))
    pbe_host.save_tiny_checkpoint(models_dir / "nan_vector.safetensors", model)
    message = _error(host, "PaintByExample.Loader", model_name="nan_vector.safetensors")
    assert "learned vector of" in message and "nan_vector.safetensors produced NaN" in message


def test_native_unet_predicts_what_the_core_unet_predicts(host, loaded):
    model, _, _ = loaded
    core = pbe_host.tiny_model()
    x = torch.randn(2, 9, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 20])
    context = torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        native = model.model.diffusion_model(x, t, context=context)
        reference = core.unet(x, t, encoder_hidden_states=context).sample
    assert torch.allclose(native, reference, atol=1e-4), (native - reference).abs().max()


def test_stock_inpaint_conditioning_feeds_the_unet_masked_latent_then_keep_mask(host, loaded):
    """The patched concat layout gives [x, masked latent, keep] with keep = 1 - mask."""
    import nodes

    model, vae, encoder = loaded
    positive, negative, _ = host.run(
        "PaintByExample.ExemplarEncode", encoder=encoder, exemplar=_image(5, size=32)
    )
    aligned = _mask(box=(16, 40, 24, 48))  # 8-aligned: exact at latent size
    positive, negative, latent = nodes.InpaintModelConditioning().encode(
        positive, negative, _image(), vae, aligned, noise_mask=True
    )
    seen = []
    patched = model.clone()

    def spy(apply, args):  # BaseModel concatenates c_concat after the noisy latent
        seen.append(torch.cat([args["input"], args["c"]["c_concat"]], dim=1))
        return apply(args["input"], args["timestep"], **args["c"])

    patched.set_model_unet_function_wrapper(spy)
    nodes.KSampler().sample(patched, 0, 1, 5.0, "euler", "normal", positive, negative, latent)
    unet_in = seen[0]
    assert unet_in.shape[1] == 9
    masked_latent = model.model.process_latent_in(positive[0][1]["concat_latent_image"])
    assert torch.allclose(unet_in[0, 4:8], masked_latent[0], atol=1e-5)
    keep = 1.0 - aligned[0, ::8, ::8]
    assert torch.equal(unet_in[0, 8], keep)


# ---------------------------------------------------------------------------------- encode


def test_encode_gives_one_token_per_exemplar_and_the_learned_negative(host, loaded):
    _, _, encoder = loaded
    positive, negative, _ = host.run(
        "PaintByExample.ExemplarEncode", encoder=encoder, exemplar=_image(1, batch=3, size=32)
    )
    assert positive[0][0].shape == (3, 1, 32)
    learned = encoder.encoder.learnable_vector.detach().float()
    assert negative[0][0].shape == (3, 1, 32)
    assert torch.allclose(negative[0][0], learned.expand(3, 1, 32))


def test_encode_ignores_an_alpha_with_no_opaque_pixel(host, loaded):
    _, _, encoder = loaded
    rgb = _image(4, size=32)
    faint = torch.cat([rgb, torch.full((1, 32, 32, 1), 0.3)], dim=-1)  # nothing reaches 0.5
    encode = "PaintByExample.ExemplarEncode"
    by_rgb = host.run(encode, encoder=encoder, exemplar=rgb)
    by_faint = host.run(encode, encoder=encoder, exemplar=faint)  # not "exemplar mask is empty"
    assert torch.equal(by_faint[0][0][0], by_rgb[0][0][0])


def test_encode_matches_the_core_encoder(host, loaded):
    from exemplar_core.preprocess import preprocess_exemplar

    _, _, encoder = loaded
    images = _image(2, batch=2, size=48)
    positive, _, _ = host.run("PaintByExample.ExemplarEncode", encoder=encoder, exemplar=images)
    core = pbe_host.tiny_model().encoder
    with torch.no_grad():
        reference = core(preprocess_exemplar(images, core.config))
    assert torch.allclose(positive[0][0], reference, atol=1e-5)


def test_several_exemplars_combine_by_mean_or_concatenated_tokens(host, loaded):
    _, _, encoder = loaded
    images = _image(3, batch=3, size=32)
    (separate,), _, _ = host.run("PaintByExample.ExemplarEncode", encoder=encoder, exemplar=images)
    (mean,), neg_mean, _ = host.run(
        "PaintByExample.ExemplarEncode", encoder=encoder, exemplar=images, combine="mean"
    )
    (concat,), _, _ = host.run(
        "PaintByExample.ExemplarEncode", encoder=encoder, exemplar=images, combine="concat tokens"
    )
    assert torch.allclose(mean[0], separate[0].mean(0, keepdim=True), atol=1e-6)
    assert concat[0].shape == (1, 3, 32) and torch.allclose(concat[0][0], separate[0][:, 0])
    assert neg_mean[0][0].shape == (1, 1, 32)


def test_exemplar_mask_crops_to_the_object(host, loaded):
    _, _, encoder = loaded
    image = _image(4, size=48)
    object_mask = torch.zeros(1, 48, 48)
    object_mask[:, 8:40, 8:40] = 1
    (with_mask,), _, _ = host.run(
        "PaintByExample.ExemplarEncode",
        encoder=encoder,
        exemplar=image,
        exemplar_mask=object_mask,
    )
    (cropped,), _, _ = host.run(
        "PaintByExample.ExemplarEncode", encoder=encoder, exemplar=image[:, 8:40, 8:40]
    )
    assert torch.allclose(with_mask[0], cropped[0], atol=1e-5)


# ---------------------------------------------------------------------------------- bezier


def test_bezier_node_is_the_trainer_function_deterministic_per_seed(host):
    from exemplar_core.bezier import bezier_mask_from_mask

    masks = _mask(batch=2)
    (first,) = host.run("PaintByExample.MaskBezierJitter", mask=masks, seed=11)
    (again,) = host.run("PaintByExample.MaskBezierJitter", mask=masks, seed=11)
    (other,) = host.run("PaintByExample.MaskBezierJitter", mask=masks, seed=12)
    assert first.shape == masks.shape
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first, bezier_mask_from_mask(masks, seed=11, jitter=5, box_expansion=0.4))
    assert set(first.unique().tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------------------------- sampler


def test_sampler_output_keeps_the_source_outside_the_feather_band(host, loaded, conditioning):
    crop = host.module("exemplar_core.crop")
    image, mask = _image(), _mask()
    out, latent = _sample(host, loaded, conditioning, image=image, mask=mask, feather=4)
    assert out.shape == image.shape
    band = crop.feather_alpha(mask[:, None], 4)[:, 0] > 0
    assert torch.equal(out[~band], image[~band])
    assert (out[mask > 0] - image[mask > 0]).abs().mean() > 0.01
    assert latent["samples"].shape == (1, 4, SIZE // 8, SIZE // 8)


def test_sampler_is_deterministic_per_seed(host, loaded, conditioning):
    a, _ = _sample(host, loaded, conditioning, seed=5)
    b, _ = _sample(host, loaded, conditioning, seed=5)
    c, _ = _sample(host, loaded, conditioning, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_batches_n_images_with_one_mask_and_one_condition(host, loaded, conditioning):
    images = _image(9, batch=2)
    out, latent = _sample(host, loaded, conditioning, image=images, mask=_mask(1))
    assert out.shape == images.shape and latent["samples"].shape[0] == 2
    single, _ = _sample(host, loaded, conditioning, image=images[1:], seed=4)
    assert torch.allclose(out[1:], single, atol=1e-5)  # item i uses seed + i


def test_sampler_takes_one_condition_per_image(host, loaded):
    _, _, encoder = loaded
    conditioning = host.run(
        "PaintByExample.ExemplarEncode", encoder=encoder, exemplar=_image(1, batch=2, size=32)
    )
    out, _ = _sample(host, loaded, conditioning, image=_image(9, batch=2), mask=_mask(2))
    assert out.shape[0] == 2


def test_sampler_colour_match_and_partial_denoise_run(host, loaded, conditioning):
    out, _ = _sample(host, loaded, conditioning, color_match=True, denoise=0.6)
    assert out.shape == (1, SIZE, SIZE, 3) and torch.isfinite(out).all()


def test_sampler_accepts_non_square_sources_larger_than_the_window(host, loaded, conditioning):
    image = torch.rand(1, 96, 160, 3)
    mask = torch.zeros(1, 96, 160)
    mask[:, 30:50, 100:130] = 1
    out, _ = _sample(host, loaded, conditioning, image=image, mask=mask)
    assert out.shape == image.shape


def test_sampler_mask_grow_and_blur_default_to_todays_edit_and_change_it_when_set(
    host, loaded, conditioning
):
    plain, _ = _sample(host, loaded, conditioning)
    same, _ = _sample(host, loaded, conditioning, mask_grow=0, mask_blur=0)
    grown, _ = _sample(host, loaded, conditioning, mask_grow=3, mask_blur=1)
    assert torch.equal(plain, same) and not torch.equal(plain, grown)


# ------------------------------------------------------------------------- crop and stitch


def test_crop_description_holds_each_images_window_and_windows_share_one_size(host, loaded):
    model, vae, _ = loaded
    images = torch.rand(2, 96, 160, 3, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 96, 160)
    masks[0, 30:50, 100:130] = 1  # at least the resolution: the 96 px height
    masks[1, 5:90, 3:90] = 1  # a wide window clipped to the image's height: 145 x 96 -> 128 x 80
    window, window_mask, crop = host.run(
        "PaintByExample.CropForEdit", image=images, mask=masks, model=model, vae=vae,
        resolution=128, feather=4, mask_grow=2,
    )  # fmt: skip
    regions = [item.window.region for item in crop.items]
    assert [(r.width, r.height) for r in regions] == [(128, 128), (128, 80)]
    assert [r.crop_size for r in regions] == [(96, 96), (145, 96)]
    assert crop.source_size == (160, 96) and crop.feather == 4
    grown = host.module("exemplar_core.masks").grow_and_blur(masks[0], 2, 0)
    assert torch.equal(crop.items[0].edit_mask[0, 0], grown)  # the full-size, grown mask
    assert window.shape == (2, 128, 128, 3) and window_mask.shape == (2, 128, 128)  # the largest
    assert set(window_mask.unique().tolist()) == {0.0, 1.0}
    (back,) = host.run("PaintByExample.StitchEdit", crop=crop, edited=window)
    band = host.module("exemplar_core.crop").feather_alpha(crop.items[0].edit_mask, 4)[0, 0] > 0
    assert torch.equal(back[0][~band], images[0][~band])


def test_crop_without_a_model_names_its_own_size_multiple_not_a_models(host):
    message = _error(
        host, "PaintByExample.CropForEdit", image=_image(), mask=_mask(), resolution=480
    )
    assert "resolution 480 is not a multiple of 64, which the window needs without a model" in (
        message
    )
    assert "connect model and vae" in message and "this model" not in message


def test_crop_reads_the_native_size_of_this_packs_model_only(host, loaded):
    model, vae, _ = loaded
    not_pbe = model.clone()  # another pack's MODEL: no marker, whatever else its options hold
    not_pbe.model_options.pop("paint_by_example")
    sizes = {}
    for name, candidate in (("pbe", model), ("other", not_pbe)):
        window, _, _ = host.run(
            "PaintByExample.CropForEdit", image=_image(), mask=_mask(), model=candidate, vae=vae
        )
        sizes[name] = tuple(window.shape[1:3])
    assert sizes == {"pbe": (SIZE, SIZE), "other": (512, 512)}  # the tiny model is 64 px native


def test_stitch_takes_k_variants_of_one_crop_and_refuses_a_mismatched_batch(host):
    image = torch.rand(1, 64, 64, 3)
    (window, _, crop) = host.run("PaintByExample.CropForEdit", image=image, mask=_mask())
    assert window.shape == (1, 512, 512, 3)  # without a model: 512 px, multiples of 64
    variants = torch.rand(3, 40, 40, 3)
    (out,) = host.run("PaintByExample.StitchEdit", crop=crop, edited=variants)
    assert out.shape == (3, 64, 64, 3) and not torch.equal(out[0], out[1])
    two = host.run("PaintByExample.CropForEdit", image=torch.rand(2, 64, 64, 3), mask=_mask())[2]
    error = host.module("nodes.checks").PaintByExampleInputError
    with pytest.raises(error, match="3 edited windows for a crop of 2 images"):
        host.run("PaintByExample.StitchEdit", crop=two, edited=variants)
    with pytest.raises(error, match="image is 32x32 but the crop was made from a 64x64 image"):
        host.run(
            "PaintByExample.StitchEdit", crop=crop, edited=window, image=torch.rand(1, 32, 32, 3)
        )
    with pytest.raises(error, match="connect both model and vae"):
        host.run("PaintByExample.CropForEdit", image=image, mask=_mask(), vae=object())


# ---------------------------------------------------------------------------------- guidance


def _ksample(model, conditioning, vae, cfg, steps=3):
    import nodes

    positive, negative = conditioning[:2]
    positive, negative, latent = nodes.InpaintModelConditioning().encode(
        positive, negative, _image(), vae, _mask(), noise_mask=False
    )
    (out,) = nodes.KSampler().sample(
        model, 1, steps, cfg, "euler", "normal", positive, negative, latent
    )
    return out["samples"]


def test_guidance_scale_overrides_the_stock_ksampler_cfg(host, loaded, conditioning):
    model, vae, _ = loaded
    (patched,) = host.run("PaintByExample.SimilarityGuidance", model=model, similarity=4.0)
    guided = _ksample(patched, conditioning, vae, cfg=1.0)
    plain = _ksample(model, conditioning, vae, cfg=4.0)
    assert torch.allclose(guided, plain, atol=1e-4)


def test_guidance_interval_skips_the_unconditional_pass_outside_it(host, loaded, conditioning):
    model, vae, _ = loaded
    (patched,) = host.run(
        "PaintByExample.SimilarityGuidance",
        model=model,
        similarity=5.0,
        sigma_low=0.0,
        sigma_high=3.0,
    )
    batches = []
    spy = patched.clone()

    def record(apply, args):  # the wrapper sees sigmas (converted to timesteps further in)
        batches.append((float(args["timestep"][0]), args["input"].shape[0]))
        return apply(args["input"], args["timestep"], **args["c"])

    spy.set_model_unet_function_wrapper(record)
    _ksample(spy, conditioning, vae, cfg=5.0, steps=4)
    by_sigma = batches
    assert any(s > 3.0 for s, _ in by_sigma) and any(s <= 3.0 for s, _ in by_sigma), by_sigma
    for sigma, batch in by_sigma:
        assert batch == (2 if sigma <= 3.0 else 1), by_sigma


def test_guidance_schedule_and_rescale_change_the_result(host, loaded, conditioning):
    model, vae, _ = loaded
    base = _ksample(
        host.run("PaintByExample.SimilarityGuidance", model=model, similarity=8.0)[0],
        conditioning,
        vae,
        cfg=1.0,
    )
    linear = _ksample(
        host.run(
            "PaintByExample.SimilarityGuidance",
            model=model,
            similarity=8.0,
            schedule="linear",
            similarity_end=1.0,
        )[0],
        conditioning,
        vae,
        cfg=1.0,
    )
    rescaled = _ksample(
        host.run("PaintByExample.SimilarityGuidance", model=model, similarity=8.0, rescale_phi=0.7)[
            0
        ],
        conditioning,
        vae,
        cfg=1.0,
    )
    assert not torch.allclose(base, linear, atol=1e-4)
    assert not torch.allclose(base, rescaled, atol=1e-4)


def test_guided_model_works_with_sampler_custom_and_our_sampler(host, loaded, conditioning):
    from comfy_extras.nodes_custom_sampler import BasicScheduler, KSamplerSelect, SamplerCustom

    import nodes

    model, vae, _ = loaded
    (patched,) = host.run("PaintByExample.SimilarityGuidance", model=model, similarity=5.0)
    positive, negative, latent = nodes.InpaintModelConditioning().encode(
        *conditioning[:2], _image(), vae, _mask(), noise_mask=False
    )
    (sampler,) = KSamplerSelect().get_sampler("euler")
    (sigmas,) = BasicScheduler().get_sigmas(patched, "normal", 2, 1.0)
    out = SamplerCustom().sample(patched, True, 0, 1.0, positive, negative, sampler, sigmas, latent)
    assert torch.isfinite(out[0]["samples"]).all()
    image, _ = _sample(host, (patched, vae, None), conditioning)
    assert image.shape == (1, SIZE, SIZE, 3)


# ---------------------------------------------------------------------------------- bad input


def _error(host, node_id, **inputs) -> str:
    errors = host.module("nodes.checks")
    with pytest.raises(errors.PaintByExampleInputError) as info:
        host.run(node_id, **inputs)
    return str(info.value)


def test_bad_inputs_give_clear_messages(host, loaded, conditioning):
    model, _, encoder = loaded
    sampler = "PaintByExample.InpaintSampler"
    base = _sampler_inputs(loaded, conditioning, steps=1)

    assert "mask is 32x32 but the image is 64x64" in _error(
        host, sampler, **{**base, "mask": torch.ones(1, 32, 32)}
    )
    assert "3 masks for 2 image(s)" in _error(
        host, sampler, **{**base, "image": _image(batch=2), "mask": _mask(3)}
    )
    assert "is empty" in _error(host, sampler, **{**base, "mask": torch.zeros(1, SIZE, SIZE)})
    assert "whole image" in _error(host, sampler, **{**base, "mask": torch.ones(1, SIZE, SIZE)})
    nan_image = _image()
    nan_image[0, 0, 0, 0] = float("nan")
    assert "NaN" in _error(host, sampler, **{**base, "image": nan_image})
    not_pbe = model.clone()
    not_pbe.model_options.pop("paint_by_example")
    assert "not a Paint-by-Example model" in _error(host, sampler, **{**base, "model": not_pbe})
    text_like = [[torch.zeros(1, 77, 768), {}]]
    assert "768-d tokens" in _error(host, sampler, **{**base, "positive": text_like})
    two = host.run("PaintByExample.ExemplarEncode", encoder=encoder, exemplar=_image(batch=2))
    assert "2 positive conditions for 3 image(s)" in _error(
        host, sampler, **{**base, "image": _image(batch=3), "positive": two[0]}
    )

    encode = "PaintByExample.ExemplarEncode"
    assert "at least 16 px" in _error(host, encode, encoder=encoder, exemplar=_image(size=12))
    nan_exemplar = _image(size=32)
    nan_exemplar[..., 0] = float("nan")
    assert "NaN" in _error(host, encode, encoder=encoder, exemplar=nan_exemplar)
    assert "PBE_ENCODER" in _error(host, encode, encoder=model, exemplar=_image(size=32))
    assert "does not fit" in _error(
        host,
        encode,
        encoder=encoder,
        exemplar=_image(batch=2, size=32),
        exemplar_mask=torch.ones(3, 32, 32),
    )

    bezier = "PaintByExample.MaskBezierJitter"
    assert "is empty" in _error(host, bezier, mask=torch.zeros(1, 32, 32))
    nan_mask = _mask()
    nan_mask[0, 0, 0] = float("nan")
    assert "NaN" in _error(host, bezier, mask=nan_mask)

    guidance = "PaintByExample.SimilarityGuidance"
    assert "needs a Paint-by-Example MODEL" in _error(host, guidance, model=not_pbe)
    assert "interval" in _error(host, guidance, model=model, sigma_low=5.0, sigma_high=1.0)
