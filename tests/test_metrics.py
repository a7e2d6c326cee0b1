from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from train import metrics, synthetic


def _paint(spec_shape: str, color: str, box=(40, 40, 90, 90)):
    scene = synthetic._background(128, random.Random(4))  # striped/gradient/noise/plain
    spec = synthetic.ObjectSpec(spec_shape, color, "solid", box, 0.0)
    synthetic.draw_object(scene, spec, random.Random(0))
    return np.asarray(scene)


def test_fidelity_is_high_for_the_exemplar_object_and_lower_for_another():
    exemplar = np.asarray(
        synthetic.make_exemplar(
            synthetic.ObjectSpec("triangle", "red", "solid", (0, 0, 1, 1), 0.0), random.Random(1)
        )
    )
    good = metrics.synthetic_fidelity(_paint("triangle", "red"), exemplar, (40, 40, 90, 90))
    wrong_color = metrics.synthetic_fidelity(_paint("triangle", "blue"), exemplar, (40, 40, 90, 90))
    wrong_shape = metrics.synthetic_fidelity(_paint("cross", "red"), exemplar, (40, 40, 90, 90))
    assert good.color_error < 0.1 < wrong_color.color_error
    assert good.shape_iou > 0.75 and wrong_shape.shape_iou < good.shape_iou - 0.15


def test_a_white_exemplar_object_near_the_background_colour_is_still_found():
    # Solid white (245) on the exemplar background (235): no pixel is past the usual threshold.
    spec = synthetic.ObjectSpec("triangle", "white", "solid", (0, 0, 1, 1), 0.0)
    exemplar = np.asarray(synthetic.make_exemplar(spec, random.Random(1)))
    target = metrics.exemplar_object(exemplar)
    assert 0.05 < target.mean() < 0.8
    fid = metrics.synthetic_fidelity(_paint("triangle", "white"), exemplar, (40, 40, 90, 90))
    assert fid.color_error < 0.1
    with pytest.raises(ValueError, match="no object pixels"):
        metrics.exemplar_object(np.full((32, 32, 3), 235, dtype=np.uint8))


def test_the_exemplar_mask_gives_a_striped_white_objects_true_colour():
    # A white (245) object with darker stripes: only the stripes are far from the background
    # (235), so telling the object by colour measures the stripes' grey, not the object's mean.
    spec = synthetic.ObjectSpec("square", "white", "stripes", (0, 0, 1, 1), 0.0)
    image, silhouette = synthetic.make_exemplar_with_mask(spec, random.Random(3))
    exemplar, inside = np.asarray(image), np.asarray(silhouette) > 127
    by_colour = exemplar[metrics.exemplar_object(exemplar)].mean()
    true_mean = exemplar[inside].mean()
    assert by_colour < true_mean - 20  # the colour rule misses the white body
    painted = np.full((64, 64, 3), 90, np.uint8)
    painted[16:48, 16:48] = round(true_mean)  # a box of the object's true mean colour
    box = (16, 16, 48, 48)
    with_mask = metrics.synthetic_fidelity(painted, exemplar, box, exemplar_mask=inside)
    without = metrics.synthetic_fidelity(painted, exemplar, box)
    assert with_mask.color_error < 0.02 < 0.1 < without.color_error
    with pytest.raises(ValueError, match="exemplar_mask must be a non-empty bool mask"):
        metrics.synthetic_fidelity(painted, exemplar, box, exemplar_mask=inside[:10])


def test_eval_cases_carry_the_exemplar_silhouette():
    case = synthetic.make_eval_case(7, 0, 64)
    exemplar = np.asarray(case["exemplar"]).astype(int)
    inside = np.asarray(case["exemplar_mask"]) > 127
    assert inside.shape == exemplar.shape[:2] and 0.05 < inside.mean() < 0.9
    # outside the silhouette (and its 0.6 px soft edge) is the plain exemplar background
    grown = (
        torch.nn.functional.max_pool2d(
            torch.from_numpy(inside).float()[None, None], kernel_size=5, stride=1, padding=2
        )[0, 0]
        .bool()
        .numpy()
    )
    assert (exemplar[~grown] == metrics.EXEMPLAR_BACKGROUND).all()
    assert (np.abs(exemplar[inside] - metrics.EXEMPLAR_BACKGROUND).max(axis=-1) > 0).mean() > 0.9


def test_psnr_is_infinite_for_identical_images_and_finite_otherwise():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255
    assert metrics.psnr(a, a) == float("inf")
    assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(48), rel=1e-6)
    where = np.ones((4, 4), bool)
    where[0, 0] = False
    assert metrics.psnr(a, b, where) == float("inf")


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 3.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = 1 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2  # |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-4)


def test_fid_with_a_tiny_random_network_is_zero_for_the_same_set_and_grows_with_shift():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    images = [torch.rand(8, 3, 16, 16) for _ in range(4)]
    shifted = [x + 0.5 for x in images]
    assert metrics.fid(net, images, images) == pytest.approx(0.0, abs=1e-6)
    assert metrics.fid(net, images, shifted) > 1e-3


def test_clip_score_is_100_for_identical_images_with_a_tiny_random_tower():
    from exemplar_core.encoder import build_tower
    from exemplar_core.model import ModelConfigs

    tower = build_tower(ModelConfigs.tiny().encoder).eval()
    a = torch.randn(3, 3, 32, 32)
    b = torch.randn(3, 3, 32, 32)
    assert metrics.clip_score(tower, a, a) == pytest.approx(100.0, abs=1e-3)
    assert metrics.clip_score(tower, a, b) < 100.0
