from __future__ import annotations

import pytest
import torch

from exemplar_core.config import EncoderConfig
from exemplar_core.preprocess import ExemplarError, crop_to_object, preprocess_exemplar

CFG = EncoderConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, out_dim=16)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CFG.mean).view(1, 3, 1, 1)
    std = torch.tensor(CFG.std).view(1, 3, 1, 1)
    return x * std + mean


def test_accepts_comfy_bhwc_and_torch_bchw_identically():
    img = torch.rand(2, 40, 60, 3)
    a = preprocess_exemplar(img, CFG)
    b = preprocess_exemplar(img.permute(0, 3, 1, 2), CFG)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)


def test_normalisation_uses_clip_mean_and_std():
    grey = torch.full((1, 3, 32, 32), 0.5)
    out = preprocess_exemplar(grey, CFG)
    expected = (0.5 - torch.tensor(CFG.mean)) / torch.tensor(CFG.std)
    assert torch.allclose(out[0, :, 0, 0], expected, atol=1e-5)


def test_squash_keeps_the_whole_width_but_center_crop_drops_the_sides():
    img = torch.zeros(1, 3, 32, 96)
    img[..., :, :16] = 1.0  # a white stripe at the far left
    squash = _unnormalize(preprocess_exemplar(img, CFG, mode="squash"))
    cropped = _unnormalize(preprocess_exemplar(img, CFG, mode="center_crop"))
    assert squash[..., :, :4].mean() > 0.9
    assert cropped.max() < 0.05


def test_exemplar_mask_crops_to_object_and_fills_background():
    img = torch.zeros(3, 50, 50)
    mask = torch.zeros(50, 50)
    mask[10:30, 20:40] = 1
    img[:, 10:30, 20:40] = 0.25
    out = crop_to_object(img, mask, fill=1.0)
    assert out.shape == (3, 20, 20) and torch.allclose(out, torch.full_like(out, 0.25))
    mask[10, 20] = 0  # a background pixel inside the box is filled white
    out = crop_to_object(img, mask, fill=1.0)
    assert out[0, 0, 0] == 1.0


@pytest.mark.parametrize(
    "images, mask, message",
    [
        (torch.rand(1, 10, 40, 3), None, "at least 16 px"),
        (torch.full((1, 20, 20, 3), float("nan")), None, "NaN"),
        (torch.rand(1, 20, 20, 3), torch.zeros(1, 20, 20), "mask is empty"),
        (torch.rand(1, 20, 20, 3), torch.ones(1, 30, 20), "same size"),
        (torch.rand(2, 20, 20, 3), torch.ones(3, 20, 20), "one mask or one per exemplar"),
    ],
)
def test_bad_exemplars_get_clear_errors(images, mask, message):
    with pytest.raises(ExemplarError, match=message):
        preprocess_exemplar(images, CFG, exemplar_mask=mask)


# ---------------------------------------------------------------------------------- framing


def _todays_preprocess(images, mask, mode, fill):
    """The exemplar preprocessing before framing existed, step by step: the object's box sliced
    out of the filled image (the whole image without a mask), resized, normalised."""
    from exemplar_core.masks import mask_box
    from exemplar_core.preprocess import normalize, resize_for_encoder

    batch = images.permute(0, 3, 1, 2).float().clamp(0, 1)
    if mask is None:
        crops = [batch]
    else:
        crops = []
        for i in range(batch.shape[0]):
            m = mask[min(i, mask.shape[0] - 1)].clamp(0, 1)[None]
            x0, y0, x1, y1 = mask_box(m[0])
            crops.append((batch[i] * m + fill * (1 - m))[None, :, y0:y1, x0:x1])
    out = torch.cat([resize_for_encoder(c, CFG.image_size, mode) for c in crops])
    return normalize(out, CFG.mean, CFG.std)


@pytest.mark.parametrize("mode", ["squash", "center_crop"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_default_framing_is_bit_identical_to_the_preprocessing_before_it(mode, with_mask):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 40, 60, 3, generator=g)
    mask = None
    if with_mask:
        mask = torch.zeros(2, 40, 60)
        mask[0, 5:30, 10:50] = 1
        mask[1, 12:38, 3:20] = 0.7
    expected = _todays_preprocess(images, mask, mode, 0.3)
    assert torch.equal(preprocess_exemplar(images, CFG, mask, mode, fill=0.3), expected)
    opaque = torch.cat([images, torch.ones(2, 40, 60, 1)], dim=-1)  # an opaque alpha: no mask
    if mask is None:
        assert torch.equal(preprocess_exemplar(opaque, CFG, mode=mode, fill=0.3), expected)


def test_framed_box_grows_around_the_centre_and_pads_the_short_side():
    from exemplar_core.preprocess import framed_box

    box = (10, 5, 30, 15)  # 20 x 10, centre (20, 10)
    assert framed_box(box) == box
    assert framed_box(box, square=True) == (10, 0, 30, 20)
    assert framed_box(box, 1.5) == (5, 3, 35, 18)  # 30 x 15 (rounded), same centre
    assert framed_box(box, 1.5, square=True) == (5, -5, 35, 25)  # 30 x 30, beyond the image
    assert framed_box(box, 2.0, square=True) == (0, -10, 40, 30)


def test_pad_to_square_centres_the_objects_box_on_the_fill():
    from exemplar_core.preprocess import frame_exemplar

    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(64, 64)
    mask[20:36, 10:42] = 1  # 32 x 16: padded to 32 x 32 = the encoder's size, no resampling
    view = frame_exemplar(image, CFG, mask, mode="pad_to_square", fill=0.25)
    assert view.shape == (1, 3, 32, 32)
    assert torch.allclose(view[0, :, 8:24], image[0, :, 20:36, 10:42], atol=1e-5)
    assert torch.allclose(view[0, :, :8], torch.full((3, 8, 32), 0.25), atol=1e-5)
    assert torch.allclose(view[0, :, 24:], torch.full((3, 8, 32), 0.25), atol=1e-5)
    squash = frame_exemplar(image, CFG, mask)  # the same box stretched to the square instead
    assert not torch.allclose(squash[0, :, :8], torch.full((3, 8, 32), 0.25), atol=0.1)


def test_expand_frames_a_ring_of_fill_around_the_whole_image_without_a_mask():
    from exemplar_core.preprocess import frame_exemplar

    image = torch.zeros(1, 3, 32, 32)
    view = frame_exemplar(image, CFG, mode="squash", fill=1.0, expand=2.0)  # 64 px, halved
    assert torch.allclose(view[0, :, 12:20, 12:20], torch.zeros(3, 8, 8), atol=1e-5)
    assert torch.allclose(view[0, :, :4], torch.ones(3, 4, 32), atol=1e-5)
    assert torch.allclose(view[0, :, :, -4:], torch.ones(3, 32, 4), atol=1e-5)
    wide = torch.zeros(1, 3, 32, 64)
    padded = frame_exemplar(wide, CFG, mode="pad_to_square", fill=1.0)  # 64 x 64, halved
    assert torch.allclose(padded[0, :, :6], torch.ones(3, 6, 32), atol=1e-5)
    assert torch.allclose(padded[0, :, 10:22], torch.zeros(3, 12, 32), atol=1e-5)


def test_alpha_is_the_exemplar_mask_unless_a_mask_is_given(caplog):
    from exemplar_core.preprocess import frame_exemplar

    g = torch.Generator().manual_seed(2)
    rgb = torch.rand(1, 3, 48, 40, generator=g)
    alpha = torch.zeros(1, 1, 48, 40)
    alpha[..., 10:30, 5:35] = 1.0
    alpha[..., 10, 5:35] = 0.5  # a soft edge blends into the fill
    rgba = torch.cat([rgb, alpha], dim=1)
    for mode in ("squash", "center_crop", "pad_to_square"):
        by_alpha = frame_exemplar(rgba, CFG, mode=mode, expand=1.3)
        by_mask = frame_exemplar(rgb, CFG, alpha[:, 0], mode=mode, expand=1.3)
        assert torch.equal(by_alpha, by_mask)
    explicit = torch.ones(48, 40)  # the explicit mask wins: the whole image, alpha ignored
    assert torch.equal(frame_exemplar(rgba, CFG, explicit), frame_exemplar(rgb, CFG, explicit))
    clear = torch.cat([rgb, torch.zeros(1, 1, 48, 40)], dim=1)
    assert torch.equal(frame_exemplar(clear, CFG), frame_exemplar(rgb, CFG))
    assert "exemplar 0 is fully transparent" in caplog.text


def test_an_alpha_with_no_opaque_pixel_is_ignored_like_a_fully_transparent_one(caplog):
    from exemplar_core.preprocess import frame_exemplar

    rgb = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(3))
    faint = torch.cat([rgb, torch.full((1, 1, 48, 40), 0.3)], dim=1)  # nothing reaches 0.5
    assert torch.equal(frame_exemplar(faint, CFG), frame_exemplar(rgb, CFG))
    assert "exemplar 0 is transparent (alpha at most 0.30): its alpha marks no object" in (
        caplog.text
    )


def test_a_background_mask_looks_inverted_and_an_object_mask_does_not():
    from exemplar_core.preprocess import mask_looks_inverted

    object_mask = torch.zeros(20, 20)
    object_mask[5:15, 5:15] = 1
    assert not mask_looks_inverted(object_mask)
    assert mask_looks_inverted(1 - object_mask)
    assert not mask_looks_inverted(torch.ones(20, 20))


@pytest.mark.parametrize(
    "expand, message",
    [
        (0.5, "expand must be a finite number between 1 and 4, got 0.5"),
        (4.5, "between 1 and 4, got 4.5"),
        (float("nan"), "got nan"),
        ("2", "got '2'"),
    ],
)
def test_bad_expansion_ratios_get_clear_errors(expand, message):
    with pytest.raises(ExemplarError, match=message):
        preprocess_exemplar(torch.rand(1, 20, 20, 3), CFG, expand=expand)


def test_an_unknown_resize_mode_names_the_modes():
    with pytest.raises(ExemplarError, match="squash, center_crop, pad_to_square, got 'pad'"):
        preprocess_exemplar(torch.rand(1, 20, 20, 3), CFG, mode="pad")
