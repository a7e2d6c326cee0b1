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
