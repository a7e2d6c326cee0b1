"""Exponential moving average of the trained parameters (kept in checkpoints, used for export)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class EMA:
    """shadow <- d * shadow + (1 - d) * param, with d = min(decay, (1 + n) / (10 + n)).

    The warm-up of the decay (diffusers' ``EMAModel`` default) keeps early EMA weights from being
    dominated by the start point; n counts optimiser steps. Shadows live in fp32 on ``device``
    (None: each parameter's own device). ``update`` is called after every optimiser step; with
    ``every`` = N the shadows move on every N-th call only, by the product of the N steps' decays
    (decay**N after the warm-up), so the EMA's time constant in steps stays the same.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        decay: float = 0.9999,
        names: list[str] | None = None,
        device: torch.device | str | None = None,
        every: int = 1,
    ) -> None:
        self.params = list(params)
        self.names = names or [str(i) for i in range(len(self.params))]
        if len(self.names) != len(self.params):
            raise ValueError("EMA needs one name per parameter")
        if every < 1:
            raise ValueError(f"EMA every must be >= 1, got {every}")
        self.decay = decay
        self.every = every
        self.device = None if device is None else torch.device(device)
        self.updates = 0  # optimiser steps seen (the shadows last moved at a multiple of every)
        self.shadow = [p.detach().to(self._home(p), torch.float32, copy=True) for p in self.params]
        self._backup: list[torch.Tensor] | None = None

    def _home(self, param: torch.Tensor) -> torch.device:
        """Where the shadow (and the swapped-out weight) of ``param`` lives."""
        return param.device if self.device is None else self.device

    def step_decay(self, step: int) -> float:
        """The warmed-up decay of optimiser step ``step`` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    def current_decay(self) -> float:
        """The decay the next shadow move applies: the product of the decays of the steps since
        the last move (one step when ``every`` = 1)."""
        start = self.updates + 1 - self.every
        return math.prod(self.step_decay(n) for n in range(start, self.updates + 1))

    @torch.no_grad()
    def update(self) -> None:
        """Count one optimiser step; move the shadows when the count reaches a multiple of
        ``every``."""
        if (self.updates + 1) % self.every == 0:
            weight = 1.0 - self.current_decay()
            pairs = list(zip(self.shadow, self.params, strict=True))
            if all(_same_device(s, p) for s, p in pairs):
                # One multi-tensor launch on an accelerator instead of one lerp per parameter
                # (the published UNet has about 700): the same formula, the same bits.
                sources = [p.detach().to(torch.float32) for _, p in pairs]
                torch._foreach_lerp_(self.shadow, sources, weight)
            else:
                # Shadows elsewhere (ema_device="cpu"): one parameter's fp32 copy at a time, never
                # a copy of all the trained weights at once in host memory.
                for shadow, param in pairs:
                    shadow.lerp_(param.detach().to(shadow.device, torch.float32), weight)
        self.updates += 1

    @torch.no_grad()
    def swap_in(self) -> None:
        """Put the EMA weights into the model (``swap_out`` restores the trained ones). The
        trained weights wait on the shadows' device."""
        self._backup = [p.detach().to(self._home(p), copy=True) for p in self.params]
        for shadow, param in zip(self.shadow, self.params, strict=True):
            param.copy_(shadow.to(param.dtype))

    @torch.no_grad()
    def swap_out(self) -> None:
        if self._backup is None:
            raise RuntimeError("EMA.swap_out called without swap_in")
        for backup, param in zip(self._backup, self.params, strict=True):
            param.copy_(backup)
        self._backup = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Shadows keyed by parameter name (the model's own names), plus ``updates``."""
        state = {f"shadow.{n}": s for n, s in zip(self.names, self.shadow, strict=True)}
        state["updates"] = torch.tensor(self.updates)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if f"shadow.{n}" not in state]
        if missing:
            raise ValueError(f"the EMA state lacks {missing[:3]}: it is from another model")
        for name, shadow in zip(self.names, self.shadow, strict=True):
            shadow.copy_(state[f"shadow.{name}"])
        self.updates = int(state["updates"])


def _same_device(shadow: torch.Tensor, param: torch.Tensor) -> bool:
    return shadow.device == param.device
