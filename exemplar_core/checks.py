"""Checks shared by the editor, the CLI and the nodes: numbers a user gives, a model's output.

``check_number`` refuses NaN, infinity and values outside a range with a message naming the
setting; every caller passes the name the user knows (``similarity`` on a node, ``--similarity``
on the command line). ``check_output`` refuses a non-finite model output (NaN weights in a damaged
file or a diverged fine-tune, an fp16 overflow) instead of letting it become a flat black image.

The limits below are the declared ranges of the node inputs and the editor's settings alike.
"""

from __future__ import annotations

import math
import numbers

import torch

SEED_MAX = 2**64 - 1  # ComfyUI's seed range (KSampler) and torch.Generator.manual_seed's
SIMILARITY_MAX = 50.0
CONTEXT_MARGIN_MAX = 4.0
FEATHER_MAX = 256
RESOLUTION_MAX = 2048
MASK_GROW_MAX = 1024  # px the edit mask may grow (or, negative, shrink) by
MASK_BLUR_MAX = 256  # px radius of the edit mask's blur
EXEMPLAR_EXPAND_MAX = 4.0  # the exemplar object's box may grow to this many times its size
LORA_STRENGTH_MAX = 100.0  # ComfyUI's LoraLoader range is -100..100; a LoRA strength is either sign


class SettingError(ValueError):
    """A number outside what the code can use; ``name`` is the setting as the user calls it."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name} {problem}")


def _show(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _expected(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {_show(low)} and {_show(high)}"
    if low is not None:
        return f">= {_show(low)}"
    if high is not None:
        return f"<= {_show(high)}"
    return ""


def check_number(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
) -> None:
    """Raise SettingError unless ``value`` is a finite number in ``low..high`` (whole if
    ``integer``). Bools are refused: ``True`` as a step count is a wiring mistake."""
    kind = "whole number" if integer else "finite number"
    expected = " ".join(part for part in (kind, _expected(low, high)) if part)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingError(name, f"must be a {expected}, got {value!r}")
    # numpy scalars from other nodes count; whole numbers stay exact (2**64 - 1 is no float)
    value = int(value) if isinstance(value, numbers.Integral) else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(name, f"must be a {expected}, got {value}")
    if integer and value != int(value):
        raise SettingError(name, f"must be a {expected}, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingError(name, f"must be a {expected}, got {_show(value)}")


class NonFiniteOutputError(ValueError):
    """A model part produced NaN or infinite values; the message names the file and the part."""


def nonfinite_weights(module: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``module`` that hold NaN or infinite values."""
    bad = []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and tensor.device.type != "meta":
            if not bool(torch.isfinite(tensor).all()):
                bad.append(name)
    return bad


def check_output(
    output: torch.Tensor,
    part: str,
    source: str,
    module: torch.nn.Module | None = None,
    dtype_hint: str = "fp32",
) -> None:
    """Raise NonFiniteOutputError if ``output`` (what ``part`` of the model file ``source`` just
    returned) holds NaN or infinity. ``module``: that part, searched for non-finite weights (only
    on failure) to tell a damaged file from a numeric overflow."""
    if bool(torch.isfinite(output).all()):
        return
    where = f"the {part} of {source or 'the model'}"
    bad = nonfinite_weights(module) if module is not None else []
    if bad:
        cause = (
            f"its weights hold NaN or infinite values ({len(bad)} tensor(s), e.g. {bad[0]}): the "
            f"file is damaged or comes from a diverged training run; download or export it again"
        )
    elif module is not None:
        cause = (
            f"its weights are finite, so the computation overflowed: load the model in "
            f"{dtype_hint}, or check that the inputs are in their usual ranges"
        )
    else:
        cause = "the file may be damaged (NaN weights) or the computation overflowed"
    raise NonFiniteOutputError(
        f"{where} produced NaN or infinite values, which would give a black image: {cause}"
    )
