from __future__ import annotations

import torch

from exemplar_core import masks


def test_keep_mask_is_inverse_of_edit_mask():
    edit = torch.tensor([[0.0, 1.0], [0.3, 0.7]])
    assert torch.equal(masks.keep_from_edit(edit), 1 - edit)


def test_masked_source_greys_out_the_edit_area():
    source = torch.full((1, 3, 2, 2), 0.8)
    keep = masks.keep_from_edit(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))
    out = masks.masked_source(source, keep)
    assert out[0, :, 0, 0].eq(0).all() and out[0, :, 1, 1].eq(0.8).all()


def test_unet_input_order_is_noisy_masked_keep():
    x = torch.zeros(1, 4, 2, 2)
    masked = torch.ones(1, 4, 2, 2)
    keep = torch.full((1, 1, 2, 2), 2.0)
    out = masks.unet_input(x, masked, keep)
    assert out.shape == (1, 9, 2, 2)
    assert out[:, :4].eq(0).all() and out[:, 4:8].eq(1).all() and out[:, 8].eq(2).all()


def test_bilinear_and_nearest_agree_on_grid_aligned_masks_but_not_on_unaligned():
    keep = torch.ones(1, 1, 64, 64)
    keep[..., 16:40, 8:48] = 0  # aligned to the 8-px latent grid
    a = masks.latent_keep_mask(keep, (8, 8), "bilinear")
    b = masks.latent_keep_mask(keep, (8, 8), "nearest")
    assert torch.equal(a, b)
    keep = torch.ones(1, 1, 64, 64)
    keep[..., 20:44, 12:52] = 0  # edges fall between the two pixels bilinear samples
    a = masks.latent_keep_mask(keep, (8, 8), "bilinear")
    assert ((a > 0) & (a < 1)).any(), "bilinear keeps soft edges as the official code"


def test_mask_box_is_exclusive_at_the_far_side_and_none_for_an_empty_mask():
    mask = torch.zeros(10, 12)
    mask[2:5, 3:9] = 1
    mask[7, 1] = 0.49  # under the 0.5 threshold: not part of the box
    assert masks.mask_box(mask) == (3, 2, 9, 5)
    assert masks.mask_box(mask, threshold=0.4) == (1, 2, 9, 8)
    assert masks.mask_box(torch.full((4, 4), 0.3)) is None


def test_the_old_inpaint_module_re_exports_the_masks_functions():
    from exemplar_core import inpaint

    old_names = ["MaskResize", "binarize_edit_mask", "keep_from_edit", "latent_keep_mask"]
    for name in [*old_names, "masked_source", "unet_input"]:
        assert getattr(inpaint, name) is getattr(masks, name), name
