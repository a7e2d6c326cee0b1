"""The shared checks: numbers by name, and a model part's non-finite output by file and part."""

from __future__ import annotations

import pytest
import torch

from exemplar_core.checks import NonFiniteOutputError, SettingError, check_number, check_output


@pytest.mark.parametrize(
    "value, integer, message",
    [
        (True, True, "steps must be a whole number between 1 and 10, got True"),
        ("5", False, "steps must be a finite number between 1 and 10, got '5'"),
        (float("-inf"), False, "steps must be a finite number between 1 and 10, got -inf"),
        (11, True, "steps must be a whole number between 1 and 10, got 11"),
    ],
)
def test_check_number_names_the_setting_and_its_range(value, integer, message):
    with pytest.raises(SettingError) as caught:
        check_number(value, "steps", 1, 10, integer)
    assert str(caught.value) == message
    assert caught.value.name == "steps"


def test_a_finite_value_in_range_passes_numpy_scalars_too():
    import numpy as np

    check_number(2**64 - 1, "seed", 0, 2**64 - 1, integer=True)
    check_number(np.uint64(2**64 - 1), "seed", 0, 2**64 - 1, integer=True)
    check_number(0.5, "eta", 0.0, 1.0)
    check_number(np.float32(0.5), "eta", 0.0, 1.0)
    with pytest.raises(SettingError, match="got nan"):
        check_number(np.float32("nan"), "eta", 0.0, 1.0)


def test_non_finite_output_of_finite_weights_is_called_an_overflow():
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(NonFiniteOutputError) as caught:
        check_output(torch.tensor([1.0, float("inf")]), "UNet", "model.safetensors", layer, "fp32")
    message = str(caught.value)
    assert message.startswith("the UNet of model.safetensors produced NaN or infinite values")
    assert "weights are finite, so the computation overflowed: load the model in fp32" in message


def test_non_finite_weights_are_named():
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.bias[0] = float("nan")
    with pytest.raises(NonFiniteOutputError, match=r"1 tensor\(s\), e\.g\. bias"):
        check_output(layer(torch.ones(1, 2)), "VAE decoder", "vae.safetensors", layer)


def test_a_finite_output_passes():
    check_output(torch.zeros(3), "UNet", "model.safetensors")
