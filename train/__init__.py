"""Standalone Paint-by-Example trainer: ``python -m train --config FILE.toml``.

See docs/training.md.

Never imports ComfyUI or ``nodes/``; builds on ``exemplar_core`` only.
"""

from __future__ import annotations

from .config import ConfigError, TrainConfig, load_config
from .readers import DatasetError

__all__ = ["ConfigError", "DatasetError", "TrainConfig", "load_config", "train"]


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Run (or with ``resume`` continue) a training run; returns its summary."""
    from .trainer import train as _train

    return _train(config, resume=resume)
