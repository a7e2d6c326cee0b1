"""The optimiser factory: ``train.optimizer`` -> a torch optimiser over the trained parameters.

``adamw`` is torch's AdamW (fp32 moments, 8 bytes of state per trained parameter).
``adamw8bit`` is bitsandbytes' block-wise 8-bit AdamW (2 bytes per parameter plus one fp32
scale per 256 values; tensors under 4096 values keep fp32 moments); it runs on CPU and CUDA.
``adafactor`` is torch's Adafactor (factored second moment: one row and one column vector per
matrix, no first moment); its learning rate is a *relative* step (docs/training.md, "Memory").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args

import torch
from torch import nn

from .config import OptimizerName


def build_optimizer(
    params: Iterable[nn.Parameter],
    name: str,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """One optimiser over ``params`` (one parameter group), by ``train.optimizer`` name;
    ``fused`` takes AdamW's fused implementation (AdamW only)."""
    params = list(params)
    if fused and name != "adamw":
        raise ValueError(f"a fused optimiser is AdamW only, not {name!r}")
    if name == "adamw":
        return torch.optim.AdamW(
            params,
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            eps=eps,
            fused=True if fused else None,
        )
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(
            params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps
        )
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {name!r}: one of {list(get_args(OptimizerName))}")


def optimizer_from_config(params: Iterable[nn.Parameter], t) -> torch.optim.Optimizer:
    """``build_optimizer`` with the options of a ``TrainSection``."""
    return build_optimizer(
        params, t.optimizer, t.lr, tuple(t.betas), t.weight_decay, t.adam_eps, t.fused_optimizer
    )


def state_tensors(state) -> list[torch.Tensor]:
    """Every tensor in an optimiser state (``optimizer.state[p]``, a state dict, or a nesting
    of dicts, lists and tuples as bitsandbytes' state has), in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for value in state.values() for t in state_tensors(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in state_tensors(value)]
    return []


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimiser's state (after a step; bitsandbytes' quantisation
    maps and scales included), each storage counted once."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in state_tensors(list(optimizer.state.values()))
    }
    return sum(storages.values())


__all__ = [
    "build_optimizer",
    "optimizer_from_config",
    "state_bytes",
    "state_tensors",
]
