"""The reference augmentation, mask choice and square crop follow the official recipe."""

from __future__ import annotations

import importlib
import random
from collections import Counter

import numpy as np
import pytest
import torch

from exemplar_core.config import CLIP_MEAN, CLIP_STD
from train.augment import (
    PairSpec,
    ReferenceAugment,
    apply_reference_params,
    augment_reference,
    box_blur,
    crop_reference,
    draw_edit_mask,
    draw_reference_params,
    make_pair,
    rotation_matrix,
    square_window,
    three_point_warp,
    warp_affine,
)

DRAWS = 4000


def _rates(spec: ReferenceAugment) -> dict[str, float]:
    rng = random.Random(0)
    params = [draw_reference_params(rng, spec, 224) for _ in range(DRAWS)]
    return {
        "flip": np.mean([p.hflip for p in params]),
        "rotate": np.mean([p.angle is not None for p in params]),
        "blur": np.mean([p.blur_kernel is not None for p in params]),
        "warp": np.mean([p.warp is not None for p in params]),
        "angles": [p.angle for p in params if p.angle is not None],
        "kernels": Counter(p.blur_kernel for p in params if p.blur_kernel is not None),
        "warps": [p.warp for p in params if p.warp is not None],
    }


def test_reference_transform_rates_match_official_probabilities():
    rates = _rates(ReferenceAugment())
    assert rates["flip"] == pytest.approx(0.5, abs=0.03)
    assert rates["rotate"] == pytest.approx(0.5, abs=0.03)
    assert rates["blur"] == pytest.approx(0.3, abs=0.03)
    assert rates["warp"] == pytest.approx(0.3, abs=0.03)
    assert min(rates["angles"]) >= -20 and max(rates["angles"]) <= 20
    assert min(rates["angles"]) < -19 and max(rates["angles"]) > 19
    assert set(rates["kernels"]) == {3, 5, 7}
    assert min(rates["kernels"].values()) > 0.25 * sum(rates["kernels"].values())


def test_warp_moves_anchors_by_at_most_fifty_pixels_at_224():
    anchors = np.array([[186, 186, 1], [186, 38, 1], [38, 38, 1]], dtype=np.float64)
    shifts = []
    for matrix in _rates(ReferenceAugment())["warps"]:
        moved = anchors @ matrix.T
        shifts.append(np.abs(moved - anchors[:, :2]))
    shifts = np.stack(shifts)
    assert shifts.max() <= 50 + 1e-6
    assert shifts.max() > 45  # uses the whole range: a strong warp, not a subtle one
    # The warp scales with the encoder size: at 112 px the shift is at most 25 px.
    matrix = three_point_warp(random.Random(0), 112, 25.0)
    small = np.array([[93, 93, 1], [93, 19, 1], [19, 19, 1]], dtype=np.float64)
    assert np.abs(small @ matrix.T - small[:, :2]).max() <= 25 + 1e-6


def test_hflip_mirrors_the_reference():
    image = torch.zeros(3, 8, 8)
    image[:, :, :2] = 1.0
    params = draw_reference_params(
        random.Random(0), ReferenceAugment(hflip_p=1, rotate_p=0, blur_p=0, warp_p=0), 8
    )
    flipped = apply_reference_params(image, params)
    assert torch.equal(flipped, image.flip(-1))


def test_identity_warp_returns_the_image():
    image = torch.rand(3, 9, 7)
    out = warp_affine(image, np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    assert torch.allclose(out, image, atol=1e-5)


def test_rotation_by_90_degrees_is_counter_clockwise_like_cv2():
    image = torch.arange(25, dtype=torch.float32).reshape(1, 5, 5)
    out = warp_affine(image, rotation_matrix(90.0, 5, 5))
    assert torch.allclose(out, torch.rot90(image, 1, dims=(1, 2)), atol=1e-4)


def test_warp_border_is_reflect_101():
    image = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 4.0]]])
    shifted = warp_affine(image, np.array([[1.0, 0, 2.0], [0, 1.0, 0]]))  # dst(x) = src(x - 2)
    # reflect-101: src(-1) = src(1), src(-2) = src(2) (cv2's default border, not edge copies).
    assert torch.allclose(shifted[0, 0], torch.tensor([2.0, 1.0, 0.0, 1.0, 2.0]), atol=1e-5)


def test_box_blur_is_a_mean_filter_with_reflect_101_border():
    image = torch.rand(1, 6, 6)
    out = box_blur(image, 3)
    assert torch.allclose(out[0, 2, 3], image[0, 1:4, 2:5].mean(), atol=1e-6)
    # Row -1 reflects onto row 1 and column -1 onto column 1.
    padded = image[0, [1, 0, 1], :][:, [1, 0, 1]]
    assert torch.allclose(out[0, 0, 0], padded.mean(), atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        box_blur(image, 4)


def test_reference_crop_pads_ten_pixels_clipped_at_the_border():
    image = torch.rand(3, 100, 120)
    assert crop_reference(image, (30, 40, 60, 70), 10).shape == (3, 50, 50)
    assert crop_reference(image, (5, 0, 60, 95), 10).shape == (3, 100, 70)


def test_augmented_reference_is_squashed_to_the_encoder_size():
    crop = torch.rand(3, 40, 90)
    out = augment_reference(crop, random.Random(0), ReferenceAugment(), 32)
    assert out.shape == (3, 32, 32)
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_mask_kind_is_bezier_half_the_time():
    rng = random.Random(0)
    kinds = Counter(
        draw_edit_mask((30, 30, 60, 60), 100, 100, rng, PairSpec())[2] for _ in range(1000)
    )
    assert kinds["bezier"] / 1000 == pytest.approx(0.5, abs=0.05)


def test_rectangle_mask_is_the_extended_box():
    spec = PairSpec(bezier_p=0.0)
    mask, extended, kind = draw_edit_mask((30, 30, 60, 60), 100, 100, random.Random(2), spec)
    assert kind == "box"
    x0, y0, x1, y1 = extended
    assert mask.sum() == (x1 - x0) * (y1 - y0)
    assert mask[y0:y1, x0:x1].min() == 1.0


@pytest.mark.parametrize(("width", "height"), [(160, 100), (100, 160)])
def test_square_window_contains_the_extended_box_and_zooms_in(width, height):
    rng = random.Random(0)
    extended = (60, 30, 90, 70) if width > height else (30, 60, 70, 90)
    sides = []
    for _ in range(300):
        x0, y0, x1, y1 = square_window(extended, width, height, rng, 0.6)
        assert x1 - x0 == y1 - y0
        assert x0 <= extended[0] and y0 <= extended[1]
        assert x1 >= extended[2] and y1 >= extended[3]
        assert 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
        sides.append(x1 - x0)
    short = min(width, height)
    assert max(sides) == short and min(sides) < short  # a random zoom-in, sometimes none


def test_square_window_falls_back_to_the_whole_image_when_box_is_too_wide():
    assert square_window((0, 10, 150, 50), 160, 100, random.Random(0), 0.6) == (0, 0, 160, 100)
    assert square_window((10, 10, 50, 50), 100, 100, random.Random(0), 0.6) == (0, 0, 100, 100)


def test_make_pair_builds_consistent_tensors():
    image = torch.rand(3, 80, 120)
    spec = PairSpec(resolution=64, reference_size=32)
    pair = make_pair(image, (40, 20, 80, 60), random.Random(0), spec)
    assert pair.image.shape == (3, 64, 64)
    assert pair.keep_mask.shape == (1, 64, 64)
    assert pair.reference.shape == (3, 32, 32)
    assert -1.0 <= pair.image.min() and pair.image.max() <= 1.0
    assert 0.0 <= pair.keep_mask.min() and pair.keep_mask.max() <= 1.0
    assert torch.allclose(pair.masked_image, pair.image * pair.keep_mask)
    assert pair.keep_mask.min() == 0.0 and pair.keep_mask.max() == 1.0  # a hole and a background
    # The reference is CLIP-normalised.
    lo = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    hi = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    ref = pair.reference.flatten(1)
    assert (ref.min(1).values >= lo - 1e-5).all() and (ref.max(1).values <= hi + 1e-5).all()


def test_make_pair_is_a_pure_function_of_the_seed():
    image = torch.rand(3, 80, 120)
    spec = PairSpec(resolution=64, reference_size=32)
    a = make_pair(image, (40, 20, 80, 60), random.Random(5), spec)
    b = make_pair(image, (40, 20, 80, 60), random.Random(5), spec)
    assert torch.equal(a.image, b.image) and torch.equal(a.reference, b.reference)


def test_make_pair_rejects_a_box_outside_the_image():
    with pytest.raises(ValueError, match="outside"):
        make_pair(torch.rand(3, 50, 50), (10, 10, 60, 40), random.Random(0), PairSpec())


def test_the_old_core_path_says_the_augmentation_moved_to_the_trainer():
    with pytest.raises(ImportError, match=r"moved to train\.augment"):
        importlib.import_module("exemplar_core.augment")
