"""Exponential moving average of the trained parameters (kept in checkpoints, used for export)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class EMA:
    """shadow <- d * shadow + (1 - d) * param, with d = min(decay, (1 + n) / (10 + n)).

    The warm-up of the decay (diffusers' ``EMAModel`` default) keeps early EMA weights from being
    dominated by the start point. Shadows live in fp32 on the parameters' device.
    """

    def __init__(
        self, params: Iterable[nn.Parameter], decay: float = 0.9999, names: list[str] | None = None
    ) -> None:
        self.params = list(params)
        self.names = names or [str(i) for i in range(len(self.params))]
        if len(self.names) != len(self.params):
            raise ValueError("EMA needs one name per parameter")
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().float().clone() for p in self.params]
        self._backup: list[torch.Tensor] | None = None

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for shadow, param in zip(self.shadow, self.params, strict=True):
            shadow.lerp_(param.detach().float(), 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def swap_in(self) -> None:
        """Put the EMA weights into the model (``swap_out`` restores the trained ones)."""
        self._backup = [p.detach().clone() for p in self.params]
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
