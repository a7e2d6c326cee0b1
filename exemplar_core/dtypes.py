"""The names users give weight and compute dtypes: ``fp32``, ``fp16``, ``bf16``.

One table for every choice list (``convert --dtype``, ``edit --dtype``, the loader's
``weight_dtype``, the benchmarks); each adds its own "let the device decide" name in front.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
