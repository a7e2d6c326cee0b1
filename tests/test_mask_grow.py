"""Mask grow (round-ish, negative shrinks) and blur (smooths the outline) of the edit mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from exemplar_core.checks import SettingError
from exemplar_core.masks import _octagon_segments, grow_and_blur


def _dot(size: int = 301) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[size // 2, size // 2] = 1
    return mask


def _reference(mask: torch.Tensor, grow: int) -> torch.Tensor:
    """The grow by brute force: every offset of the structuring element, the image repeated
    beyond its edge; a shrink is the grow of what is kept."""
    offsets = {(0, 0)}
    for dy, dx, half in _octagon_segments(abs(grow)):
        offsets = {(y + t * dy, x + t * dx) for y, x in offsets for t in range(-half, half + 1)}
    reach = max(max(abs(y), abs(x)) for y, x in offsets)
    selected = mask > 0.5 if grow > 0 else mask < 0.5
    padded = F.pad(selected[None, None].float(), (reach,) * 4, mode="replicate")[0, 0] > 0.5
    h, w = mask.shape
    out = torch.zeros(h, w, dtype=torch.bool)
    for y, x in offsets:
        out |= padded[reach + y : reach + y + h, reach + x : reach + x + w]
    return out if grow > 0 else ~out


def test_zero_grow_and_blur_return_the_mask_unchanged():
    soft = torch.rand(2, 1, 33, 20)
    assert grow_and_blur(soft, 0, 0) is soft


def test_result_is_binary_with_the_input_shape_and_dtype():
    mask = torch.zeros(2, 1, 40, 30, dtype=torch.float64)
    mask[:, :, 10:20, 5:15] = 0.8
    out = grow_and_blur(mask, 3, 2)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_grow_and_shrink_match_the_brute_force_structuring_element():
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        h, w = torch.randint(5, 30, (2,), generator=generator).tolist()
        mask = (torch.rand(h, w, generator=generator) > 0.85).float()
        if trial % 3 == 0:
            mask[:, :2] = 1  # touches the edge: the image goes on beyond it
        grow = int(torch.randint(1, min(h, w) + 1, (1,), generator=generator))
        grow = grow if trial % 2 else -grow
        expected = _reference(mask, grow)
        if not mask.any() or not expected.any():
            continue
        assert torch.equal(grow_and_blur(mask, grow, 0) > 0.5, expected), (trial, grow)


def test_grow_reaches_the_distance_in_every_direction_and_is_round_not_square():
    grown = grow_and_blur(_dot(), 100, 0)
    c = 150
    for dy, dx in ((0, 100), (100, 0), (0, -100), (-100, 0), (70, 70), (-70, 70)):
        assert grown[c + dy, c + dx] == 1  # 100 px along the axes, ~100 px along the diagonals
    assert grown[c, c + 101] == 0 and grown[c + 101, c] == 0
    assert grown[c + 74, c + 74] == 0  # a square would reach (100, 100): 141 px
    area = float(grown.sum())
    assert abs(area / (math.pi * 100**2) - 1) < 0.08  # an octagon: within 8 % of the disc


def test_shrink_is_the_inverse_distance_and_keeps_an_edge_touching_mask_at_the_edge():
    mask = torch.zeros(100, 100)
    mask[:, :60] = 1  # touches three edges
    shrunk = grow_and_blur(mask, -10, 0)
    assert shrunk[:, :50].all() and not shrunk[:, 50:].any()


def test_blur_smooths_the_outline_rounds_corners_and_fills_small_gaps():
    mask = torch.zeros(200, 200)
    mask[50:150, 50:150] = 1
    mask[98:101, 98:101] = 0  # a 3 px hole
    mask[100:102, 10:50] = 1  # a 2 px thin stroke
    blurred = grow_and_blur(mask, 0, 12)
    assert blurred[99, 99] == 1  # the hole is filled
    assert not blurred[100:102, 10:40].any()  # the thin stroke is gone
    assert blurred[50, 100] == 1 and blurred[100, 149] == 1  # straight edges stay where they were
    assert blurred[50, 50] == 0 and blurred[100, 100] == 1  # the corner is rounded


def test_large_blur_runs_on_a_reduced_copy_and_still_keeps_a_big_shape():
    mask = torch.zeros(1200, 1200)
    mask[200:1000, 300:900] = 1
    blurred = grow_and_blur(mask, 0, 200)
    assert blurred[600, 600] == 1 and blurred[600, 310] == 1 and blurred[100, 600] == 0
    assert blurred[205, 305] == 0  # the corner is rounded off


def test_grow_on_a_4096_px_mask_by_500_works_on_the_box_only():
    mask = torch.zeros(4096, 4096)
    mask[1800:2300, 1900:2000] = 1
    grown = grow_and_blur(mask, 500, 0)
    assert grown[2050, 2499] == 1 and grown[2050, 2500] == 0  # 500 px right of column 1999
    assert grown[1300, 1950] == 1 and grown[1299, 1950] == 0
    assert not grown[:, :1399].any() and not grown[:, 2500:].any()


def test_grow_larger_than_the_image_names_the_size_and_the_largest_useful_grow():
    with pytest.raises(SettingError, match=r"mask_grow 70 is larger than the 64x48 image.*64"):
        grow_and_blur(torch.ones(48, 64), 70, 0)


def test_negative_blur_and_a_grow_past_the_limit_are_refused():
    with pytest.raises(SettingError, match="mask_blur must be a whole number between 0"):
        grow_and_blur(torch.ones(8, 8), 0, -1)
    with pytest.raises(SettingError, match="--mask-grow must be a whole number"):
        grow_and_blur(torch.ones(8, 8), 5000, 0, names=("--mask-grow", "--mask-blur"))


def test_a_shrink_or_blur_that_empties_the_mask_says_so():
    mask = torch.zeros(100, 100)
    mask[40:60, 40:50] = 1
    with pytest.raises(SettingError, match=r"mask_grow -40 removes the whole mask: .*10x20"):
        grow_and_blur(mask, -40, 0)
    dot = torch.zeros(100, 100)
    dot[50:52, 50:52] = 1
    with pytest.raises(SettingError, match="mask_blur 20 removes the whole mask"):
        grow_and_blur(dot, 0, 20)


def test_a_blur_that_empties_what_a_shrink_left_names_the_blur_and_the_shrunk_box():
    mask = torch.zeros(100, 100)
    mask[30:70, 30:70] = 1
    assert grow_and_blur(mask, -10, 0).any()  # the shrink alone leaves 20x20 px
    with pytest.raises(SettingError, match=r"^--mask-blur 60 removes .*--mask-grow -10 .*20x20"):
        grow_and_blur(mask, -10, 60, names=("--mask-grow", "--mask-blur"))


def test_an_empty_mask_stays_empty():
    assert not grow_and_blur(torch.zeros(1, 20, 20), 5, 3).any()
