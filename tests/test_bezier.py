"""The Bezier edit mask reproduces the official dataset code, and the node helper is batched."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from exemplar_core.bezier import (
    CURVE_T_VALUES,
    bezier_mask,
    bezier_mask_from_mask,
    bezier_polygon,
    extend_box,
)

# Point counts and leading points produced by the official loop over the `bezier` package
# (bezier 2024.6.20, compiled speedup) for these (box, extended box) pairs, jitter removed.
GOLDEN = [
    ((100, 100, 400, 400), (60, 40, 470, 450), 54, [(115.0, 94.3), (130.0, 89.2)]),
    ((10, 20, 50, 90), (3, 5, 70, 120), 55, [(12.0, 18.575), (14.0, 17.3)]),
    ((0, 0, 128, 64), (0, 0, 150, 100), 27, [(6.4, 0.0), (130.08999999999997, 3.2)]),
    ((33, 47, 311, 199), (20, 30, 400, 260), 58, [(46.9, 45.385), (60.8, 43.940000000000005)]),
]


def test_curve_is_sampled_at_eighteen_t_values_excluding_corners():
    assert len(CURVE_T_VALUES) == 18
    assert CURVE_T_VALUES[0] == pytest.approx(0.05)
    assert CURVE_T_VALUES[-1] == pytest.approx(0.90)


@pytest.mark.parametrize(("box", "extended", "count", "first"), GOLDEN)
def test_polygon_matches_official_points_including_dedupe_quirk(box, extended, count, first):
    points = bezier_polygon(box, extended, random.Random(0), jitter=0)
    assert len(points) == count
    assert points[:2] == first  # exact float equality: the dedupe depends on it


def test_dedupe_quirk_drops_points_past_the_apex():
    box, extended = (100, 100, 400, 400), (60, 40, 470, 450)
    quirky = bezier_polygon(box, extended, random.Random(0), jitter=0)
    full = bezier_polygon(box, extended, random.Random(0), jitter=0, dedupe_quirk=False)
    assert len(full) == 72
    assert len(quirky) < 60


def test_jitter_is_integer_and_within_plus_minus_five_pixels():
    box, extended = (100, 100, 400, 400), (60, 40, 470, 450)
    clean = bezier_polygon(box, extended, random.Random(0), jitter=0)
    offsets = set()
    for seed in range(40):
        jittered = bezier_polygon(box, extended, random.Random(seed))
        for (cx, cy), (jx, jy) in zip(clean, jittered, strict=True):
            offsets.add(round(jx - cx, 6))
            offsets.add(round(jy - cy, 6))
    assert offsets == {float(v) for v in range(-5, 6)}


def test_polygon_area_is_about_1_24_box_and_covers_99_percent():
    # A 300 px box whose extended rectangle is 1.94x its area (the dossier's simulation).
    box, extended = (100, 100, 400, 400), (41, 41, 459, 459)
    ratios, coverage = [], []
    for seed in range(30):
        mask = bezier_mask(box, extended, 500, 500, random.Random(seed))
        ratios.append(mask.sum() / 300**2)
        coverage.append(mask[100:400, 100:400].mean())
    assert 1.20 < np.mean(ratios) < 1.30
    assert np.mean(coverage) > 0.985
    assert min(coverage) > 0.97


def test_random_extension_keeps_bezier_well_below_rectangle_area():
    rng = random.Random(1)
    bezier_area, rect_area = [], []
    for _ in range(60):
        w, h = rng.randint(60, 200), rng.randint(60, 200)
        x0, y0 = rng.randint(0, 320 - w), rng.randint(0, 320 - h)
        box = (x0, y0, x0 + w, y0 + h)
        ext = extend_box(box, 320, 320, rng)
        bezier_area.append(bezier_mask(box, ext, 320, 320, rng).sum() / (w * h))
        rect_area.append((ext[2] - ext[0]) * (ext[3] - ext[1]) / (w * h))
    extra_bezier = np.mean(bezier_area) - 1
    extra_rect = np.mean(rect_area) - 1
    # A quadratic bulge reaching half-way to the extended edge adds about a third of the
    # rectangle's side strips, and the corners are cut.
    assert 0.2 * extra_rect < extra_bezier < 0.5 * extra_rect


def test_extend_box_stays_in_image_and_within_share_of_free_space():
    rng = random.Random(3)
    for _ in range(200):
        box = (50, 20, 90, 60)
        ext = extend_box(box, 200, 100, rng, 0.4)
        assert 50 - int(0.4 * 50) <= ext[0] <= 50
        assert 20 - int(0.4 * 20) <= ext[1] <= 20
        assert 90 <= ext[2] <= 90 + int(0.4 * 110)
        assert 60 <= ext[3] <= 60 + int(0.4 * 40)


def test_bezier_mask_from_mask_is_batched_and_deterministic_per_seed():
    masks = torch.zeros(3, 64, 64)
    masks[0, 10:40, 12:50] = 1
    masks[1, 30:60, 5:25] = 1  # masks[2] stays empty
    first = bezier_mask_from_mask(masks, seed=7)
    again = bezier_mask_from_mask(masks, seed=7)
    other = bezier_mask_from_mask(masks, seed=8)
    assert first.shape == masks.shape and first.dtype == masks.dtype
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first[2].sum() == 0
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    # Mostly covers the original box, and the single-mask form equals batch item 0.
    assert first[0, 10:40, 12:50].mean() > 0.9
    assert torch.equal(bezier_mask_from_mask(masks[0], seed=7), first[0])


def test_bezier_mask_from_mask_without_box_expansion_or_jitter_stays_inside_the_box():
    mask = torch.zeros(48, 48)
    mask[8:40, 10:30] = 1
    shape = bezier_mask_from_mask(mask, seed=0, jitter=0, box_expansion=0.0)
    ys, xs = torch.nonzero(shape, as_tuple=True)
    # PIL rasterises the outline inclusively: allow one pixel.
    assert xs.min() >= 9 and xs.max() <= 30 and ys.min() >= 7 and ys.max() <= 40
    assert shape.sum() > 0.8 * mask.sum()


def test_bezier_mask_from_mask_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[H, W\] or \[B, H, W\]"):
        bezier_mask_from_mask(torch.zeros(1, 1, 8, 8), seed=0)
