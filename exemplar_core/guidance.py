"""Similarity guidance: Paint-by-Example's classifier-free guidance and its refinements.

One implementation serves the ComfyUI nodes and the standalone editor. Everything here is plain
tensor math on ε-predictions (no ComfyUI import):

- ``combine``: the Paint-by-Example formula ε = ε(v) + s·(ε(c) − ε(v)), where v is the learned
  unconditional vector and c the exemplar condition;
- ``linear_scale``: a linear schedule of s from ``s_start`` to ``s_end`` over the steps;
- an interval on sigma: guidance only for ``sigma_low <= sigma <= sigma_high``, the condition
  alone outside it (the unconditional pass can then be skipped);
- ``rescale``: the std rescale of RescaleCFG (Lin et al. 2023), done on the v-prediction as
  ComfyUI's RescaleCFG does, mixed in with weight φ, against over-saturation at high scales.

Sigmas are k-diffusion sigmas (``sigma = sqrt((1 - alpha_bar) / alpha_bar)``) and ``x`` is the
unscaled noisy sample ``x = x0 + sigma * eps`` (what ComfyUI's samplers pass around), not a
diffusers-style ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_SIMILARITY = 5.0


class GuidanceError(ValueError):
    """Guidance settings that cannot work together."""


def combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, similarity: float) -> torch.Tensor:
    """ε = ε(v) + s·(ε(c) − ε(v)) with s = ``similarity``; eps_*: [B, C, h, w] (matching)."""
    return eps_uncond + similarity * (eps_cond - eps_uncond)


def linear_scale(s_start: float, s_end: float, step: int, total_steps: int) -> float:
    """Scale at 0-based ``step`` of ``total_steps``: s_start at the first, s_end at the last."""
    if total_steps <= 1:
        return float(s_start)
    t = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return float(s_start + (s_end - s_start) * t)


def in_interval(sigma: float, sigma_low: float, sigma_high: float) -> bool:
    """Whether guidance applies at ``sigma`` (inclusive bounds)."""
    return sigma_low <= sigma <= sigma_high


def _v_from_eps(eps: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    # v = alpha·eps − s·x0 with alpha = 1/sqrt(1+σ²), s = σ/sqrt(1+σ²), x0 = x − σ·eps.
    norm = (1 + sigma**2).sqrt()
    return eps * norm - sigma * x / norm


def _eps_from_v(v: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    norm = (1 + sigma**2).sqrt()
    return (v + sigma * x / norm) / norm


def _per_sample(sigma: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma_t = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma_t.ndim == 0:
        sigma_t = sigma_t.expand(like.shape[0])
    return sigma_t.reshape(-1, *([1] * (like.ndim - 1)))


def rescale(
    eps_guided: torch.Tensor,
    eps_cond: torch.Tensor,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    phi: float,
) -> torch.Tensor:
    """RescaleCFG: match the guided v-prediction's per-sample std to the conditional one's.

    eps_guided, eps_cond, x: [B, C, h, w]; sigma: scalar or [B] (> 0); phi in 0..1 (0 = off).
    Returns the ε equivalent of ``phi·v_rescaled + (1 − phi)·v_guided``.
    """
    if phi == 0:
        return eps_guided
    sig = _per_sample(sigma, x)
    v_guided = _v_from_eps(eps_guided, x, sig)
    v_cond = _v_from_eps(eps_cond, x, sig)
    dims = tuple(range(1, x.ndim))
    guided_std = v_guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    ratio = v_cond.std(dim=dims, keepdim=True) / guided_std
    v_final = phi * (v_guided * ratio) + (1 - phi) * v_guided
    return _eps_from_v(v_final, x, sig)


@dataclass(frozen=True)
class GuidanceSettings:
    """Similarity guidance settings.

    similarity: s at the first step; similarity_end: s at the last step (None = constant);
    sigma_low/sigma_high: guidance only inside this sigma interval (condition alone outside);
    rescale_phi: RescaleCFG mix in 0..1 (0 = off).
    """

    similarity: float = DEFAULT_SIMILARITY
    similarity_end: float | None = None
    sigma_low: float = 0.0
    sigma_high: float = math.inf
    rescale_phi: float = 0.0

    def __post_init__(self) -> None:
        for name in ("similarity", "sigma_low", "rescale_phi"):
            if not math.isfinite(getattr(self, name)):
                raise GuidanceError(f"similarity guidance: {name} must be finite")
        if math.isnan(self.sigma_high):
            raise GuidanceError("similarity guidance: sigma_high must be a number")
        if self.similarity_end is not None and not math.isfinite(self.similarity_end):
            raise GuidanceError("similarity guidance: similarity_end must be finite")
        if self.sigma_low < 0:
            raise GuidanceError(
                f"similarity guidance: sigma_low must be >= 0, got {self.sigma_low:g}"
            )
        if self.sigma_high < self.sigma_low:
            raise GuidanceError(
                f"similarity guidance: sigma_low ({self.sigma_low:g}) is above sigma_high "
                f"({self.sigma_high:g}): the guidance interval is empty; give sigma_low <= "
                f"sigma_high"
            )
        if not 0.0 <= self.rescale_phi <= 1.0:
            raise GuidanceError(
                f"similarity guidance: rescale phi must be in 0..1, got {self.rescale_phi}"
            )

    def similarity_at(self, step: int, total_steps: int) -> float:
        """The similarity s at 0-based ``step`` of ``total_steps``."""
        if self.similarity_end is None:
            return float(self.similarity)
        return linear_scale(self.similarity, self.similarity_end, step, total_steps)

    def guides_at(self, sigma: float) -> bool:
        """False where the unconditional pass is not needed (outside the sigma interval)."""
        return in_interval(sigma, self.sigma_low, self.sigma_high)

    def apply(
        self,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        x: torch.Tensor,
        sigma: float,
        step: int,
        total_steps: int,
    ) -> torch.Tensor:
        """Guided ε; ``eps_uncond`` may be None outside the interval (then ε = ε(c))."""
        if eps_uncond is None or not self.guides_at(sigma):
            return eps_cond
        guided = combine(eps_uncond, eps_cond, self.similarity_at(step, total_steps))
        if self.rescale_phi > 0 and sigma > 0:
            guided = rescale(guided, eps_cond, x, sigma, self.rescale_phi)
        return guided


def step_index(sigma: float, schedule_sigmas: torch.Tensor) -> int:
    """0-based step whose interval ``[sigmas[i+1], sigmas[i]]`` holds ``sigma``.

    schedule_sigmas: [steps + 1], decreasing (the sampler's sigmas, ending at 0). Samplers that
    evaluate between two sigmas (Heun, DPM2) count as the step they belong to.
    """
    sigmas = schedule_sigmas.detach().float().cpu()
    steps = max(int(sigmas.numel()) - 1, 1)
    above = int((sigmas[:-1] >= sigma * (1 - 1e-5)).sum().item())
    return min(max(above - 1, 0), steps - 1)
