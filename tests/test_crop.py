from __future__ import annotations

import pytest
import torch

from exemplar_core import crop


def _mask(h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    m = torch.zeros(h, w)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1
    return m


def test_region_contains_mask_margin_and_feather():
    m = _mask(3000, 4000, (1000, 1200, 1300, 1500))
    r = crop.plan_region(m, context_margin=0.25, resolution=512, feather=16)
    assert r.x0 <= 1000 - 16 and r.x1 >= 1300 + 16 and r.y0 <= 1200 - 16 and r.y1 >= 1500 + 16
    assert (r.width, r.height) == (512, 512)
    # A 300 px mask with margin 0.25 and 16 px feather gives a 482 px window: native 512 instead.
    assert r.x1 - r.x0 == 512 and r.y1 - r.y0 == 512


def test_region_is_moved_inside_the_image_at_the_border():
    m = _mask(600, 800, (0, 550, 50, 600))
    r = crop.plan_region(m, resolution=512)
    assert r.x0 == 0 and r.y1 == 600 and r.x1 - r.x0 == 512 and r.y1 - r.y0 == 512


def test_region_is_clipped_to_a_small_image_and_sizes_are_multiples_of_64():
    m = _mask(100, 300, (100, 10, 200, 90))
    r = crop.plan_region(m, resolution=512)
    assert (r.x0, r.y0, r.y1) == (r.x0, 0, 100)
    assert r.width % 64 == 0 and r.height % 64 == 0 and max(r.width, r.height) == 512


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        crop.plan_region(torch.zeros(64, 64))


def test_feather_alpha_is_one_on_mask_zero_beyond_band_and_ramps_between():
    m = _mask(40, 40, (15, 15, 25, 25))[None, None]
    a = crop.feather_alpha(m, 4)[0, 0]
    assert torch.all(a[15:25, 15:25] == 1)
    assert a[20, 14] == pytest.approx(0.8) and a[20, 11] == pytest.approx(0.2)
    assert a[20, 10] == 0 and a[0, 0] == 0
    assert torch.all(a[:, :11] == 0) and torch.all(a[:, 29:] == 0)


def test_stitch_leaves_source_bit_exact_outside_feather_band():
    torch.manual_seed(0)
    source = torch.rand(1, 3, 300, 400)
    m = _mask(300, 400, (150, 100, 250, 200))
    r = crop.plan_region(m, resolution=128, feather=8)
    generated = torch.rand(1, 3, r.height, r.width)
    out = crop.stitch(source, generated, r, m[None, None], feather=8)
    band = crop.feather_alpha(m[None, None], 8)[0, 0] > 0
    assert torch.equal(out[..., ~band], source[..., ~band])
    assert not torch.allclose(out[..., 100:200, 150:250], source[..., 100:200, 150:250])


def test_crop_then_stitch_of_the_identity_returns_the_source_on_the_mask():
    source = torch.rand(1, 3, 128, 128)
    m = _mask(128, 128, (32, 32, 96, 96))
    r = crop.plan_region(m, resolution=128)
    window = crop.crop_image(source, r)
    out = crop.stitch(source, window, r, m[None, None], feather=4)
    assert torch.allclose(out, source, atol=1e-6)


def test_blend_back_resizes_the_edited_window_back_and_keeps_the_source_beyond_the_band():
    source = torch.rand(1, 3, 80, 120, generator=torch.Generator().manual_seed(3))
    edit_mask = torch.zeros(1, 1, 80, 120)
    edit_mask[..., 30:50, 40:70] = 1
    window = crop.prepare_window(source, edit_mask, 0.25, 64, 4, 64)
    red = torch.zeros(1, 3, 20, 30)
    red[:, 0] = 1
    out = crop.blend_back(source, red, window, edit_mask, feather=4)  # any size: resized back
    outside = (crop.feather_alpha(edit_mask, 4) == 0).expand_as(source)
    assert torch.equal(out[outside], source[outside])
    assert torch.allclose(out[:, 0, 30:50, 40:70], torch.ones(1, 20, 30), atol=1e-5)
    assert torch.allclose(out[:, 1:, 30:50, 40:70], torch.zeros(1, 2, 20, 30), atol=1e-5)
    matched = crop.blend_back(source, red, window, edit_mask, feather=4, color_match=True)
    assert not torch.equal(matched, out) and torch.equal(matched[outside], source[outside])
