"""Similarity guidance math (exemplar_core.guidance): no ComfyUI needed."""

from __future__ import annotations

import math

import pytest
import torch

from exemplar_core import guidance
from exemplar_core.guidance import GuidanceError, GuidanceSettings


def _eps(seed: int) -> torch.Tensor:
    return torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_combine_is_the_paint_by_example_formula():
    eps_v, eps_c = _eps(0), _eps(1)
    out = guidance.combine(eps_v, eps_c, 5.0)
    assert torch.allclose(out, eps_v + 5.0 * (eps_c - eps_v))
    assert torch.allclose(guidance.combine(eps_v, eps_c, 1.0), eps_c, atol=1e-6)
    assert torch.allclose(guidance.combine(eps_v, eps_c, 0.0), eps_v)


def test_linear_schedule_runs_from_start_to_end_over_the_steps():
    values = [guidance.linear_scale(7.0, 3.0, i, 5) for i in range(5)]
    assert values == pytest.approx([7.0, 6.0, 5.0, 4.0, 3.0])
    assert guidance.linear_scale(7.0, 3.0, 0, 1) == 7.0


def test_constant_scale_when_no_end_is_given():
    g = GuidanceSettings(similarity=4.0)
    assert [g.similarity_at(i, 10) for i in (0, 5, 9)] == [4.0, 4.0, 4.0]


def test_outside_the_sigma_interval_the_condition_alone_is_used():
    g = GuidanceSettings(similarity=5.0, sigma_low=1.0, sigma_high=3.0)
    eps_v, eps_c, x = _eps(0), _eps(1), _eps(2)
    assert torch.equal(g.apply(eps_v, eps_c, x, sigma=5.0, step=0, total_steps=4), eps_c)
    assert torch.equal(g.apply(eps_v, eps_c, x, sigma=0.5, step=3, total_steps=4), eps_c)
    inside = g.apply(eps_v, eps_c, x, sigma=2.0, step=1, total_steps=4)
    assert torch.allclose(inside, guidance.combine(eps_v, eps_c, 5.0))
    assert not g.guides_at(5.0) and g.guides_at(3.0) and g.guides_at(1.0)


def test_missing_unconditional_means_condition_alone():
    g = GuidanceSettings(similarity=5.0)
    eps_c = _eps(1)
    assert torch.equal(g.apply(None, eps_c, _eps(2), 1.0, 0, 1), eps_c)


def test_rescale_zero_phi_is_identity_and_full_phi_matches_conditional_std_in_v_space():
    eps_v, eps_c, x = _eps(0), _eps(1), _eps(2) * 3
    sigma = 2.5
    guided = guidance.combine(eps_v, eps_c, 9.0)
    assert torch.equal(guidance.rescale(guided, eps_c, x, sigma, 0.0), guided)
    out = guidance.rescale(guided, eps_c, x, sigma, 1.0)
    norm = math.sqrt(1 + sigma**2)

    def v(eps: torch.Tensor) -> torch.Tensor:
        return eps * norm - sigma * x / norm

    std = lambda t: t.std(dim=(1, 2, 3))  # noqa: E731
    assert torch.allclose(std(v(out)), std(v(eps_c)), rtol=1e-4)
    assert not torch.allclose(std(v(guided)), std(v(eps_c)), rtol=1e-2)
    half = guidance.rescale(guided, eps_c, x, sigma, 0.5)
    assert torch.allclose(half, 0.5 * out + 0.5 * guided, atol=1e-5)


def test_rescale_accepts_per_sample_sigmas():
    eps_v, eps_c, x = _eps(0), _eps(1), _eps(2)
    guided = guidance.combine(eps_v, eps_c, 6.0)
    both = guidance.rescale(guided, eps_c, x, torch.tensor([1.0, 2.0]), 0.7)
    first = guidance.rescale(guided[:1], eps_c[:1], x[:1], 1.0, 0.7)
    assert torch.allclose(both[:1], first, atol=1e-6)


def sigma_from_alpha_bar(alpha_bar: float) -> float:
    """DDPM cumulative alpha -> k-diffusion sigma = sqrt((1 - ab) / ab)."""
    return math.sqrt((1 - alpha_bar) / alpha_bar)


def x_from_vp(x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """VP sample ``sqrt(ab)·x0 + sqrt(1-ab)·eps`` -> unscaled ``x0 + sigma·eps``."""
    return x_t / math.sqrt(alpha_bar)


def test_vp_helpers_convert_to_k_diffusion_sigma_and_sample():
    ab = 0.2
    assert sigma_from_alpha_bar(ab) == pytest.approx(2.0)
    x0, eps = _eps(0), _eps(1)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    assert torch.allclose(x_from_vp(x_t, ab), x0 + 2.0 * eps, atol=1e-5)


def test_an_empty_sigma_interval_names_both_bounds():
    with pytest.raises(GuidanceError, match=r"sigma_low \(3\) is above sigma_high \(1\)"):
        GuidanceSettings(sigma_low=3.0, sigma_high=1.0)


def test_step_index_maps_sigmas_and_in_between_sigmas_to_their_step():
    sigmas = torch.tensor([10.0, 5.0, 2.0, 0.5, 0.0])
    assert [guidance.step_index(s, sigmas) for s in (10.0, 5.0, 2.0, 0.5)] == [0, 1, 2, 3]
    assert guidance.step_index(3.0, sigmas) == 1  # Heun's second evaluation of step 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma_low": 3.0, "sigma_high": 1.0},
        {"sigma_low": -1.0},
        {"rescale_phi": 1.5},
        {"similarity": float("nan")},
    ],
)
def test_impossible_settings_are_rejected_with_a_message(kwargs):
    with pytest.raises(GuidanceError, match="similarity guidance"):
        GuidanceSettings(**kwargs)
