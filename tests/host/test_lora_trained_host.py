"""A LoRA the trainer made, in a real ComfyUI 0.3.64: the stock ``LoraLoaderModelOnly`` patches
the pack's MODEL to what the trainer's own merged model computes.

The trainer fine-tunes the host's tiny checkpoint (``model.init = "pbe"``) with LoRA for a few
steps and writes both files of the run: the LoRA file (``pbe-lora-final.safetensors``, fp32) and
the merged single-file model (``lora.export_merged``: peft's merge of the same weights,
``pbe-final.safetensors``). The base MODEL patched by the stock loader with the first must equal
the MODEL the pack's Loader builds from the second, to float tolerance (fp32 on the CPU; the two
merges add the same update in a different order of float operations). The pack's LoRA Loader
must also give the merged model's exemplar condition.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pbe_host
import pytest
import torch
from test_lora_host import condition, stock_lora, unet_output
from train_support import tiny_config

TOLERANCE = 1e-5  # fp32, outputs of about unit size
LORA_NAME = "pbe-trained-lora.safetensors"
MERGED_NAME = "pbe-trained-merged.safetensors"


@pytest.fixture(scope="module")
def trained(host, models_dir, data, tmp_path_factory) -> Path:
    """A 4-step LoRA run from the host's tiny checkpoint; its two exports copied into ComfyUI's
    loras folder and the pack's model folder."""
    import folder_paths

    from train.trainer import train

    out = tmp_path_factory.mktemp("lora-run")
    config = tiny_config(
        out,
        data,
        model={"init": "pbe", "path": str(models_dir / pbe_host.TINY_MODEL_NAME)},
        train={"method": "lora", "lr": 1e-2},
        lora={
            "rank": 4,
            "alpha": 8.0,
            "unet_modules": ["attention", "conv_in"],
            "exemplar": "lora",
            "export_dtype": "fp32",
            "export_merged": True,
        },
    )
    train(config)
    loras = tmp_path_factory.mktemp("trained-loras")
    shutil.copy(out / "models" / "pbe-lora-final.safetensors", loras / LORA_NAME)
    shutil.copy(out / "models" / "pbe-final.safetensors", models_dir / MERGED_NAME)
    folder_paths.add_model_folder_path("loras", str(loras))
    return out


@pytest.fixture(autouse=True)
def _unpatched_afterwards(host):
    """The Loader's shared modules get their own weights back (see test_lora_host)."""
    yield
    import comfy.model_management as mm

    mm.unload_all_models()


def _merged(host):
    return host.run("PaintByExample.Loader", model_name=MERGED_NAME, weight_dtype="fp32")


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    difference = (actual - expected).abs().max().item()
    print(f"{what}: max abs difference {difference:.3g} (largest {expected.abs().max():.3g})")
    assert difference < TOLERANCE, f"{what}: max abs difference {difference:.3g}"


def test_stock_loader_with_the_trainers_lora_equals_the_trainers_merged_model(
    host, loaded, trained
):
    model, _, _ = loaded
    merged_model, _, _ = _merged(host)
    expected = unet_output(merged_model)
    actual = unet_output(stock_lora(host, model, LORA_NAME))
    _assert_close(actual, expected, "UNet")
    assert (expected - unet_output(model)).abs().max() > 100 * TOLERANCE  # the LoRA learnt


def test_pack_node_with_the_trainers_lora_equals_the_trainers_merged_model(host, loaded, trained):
    model, _, encoder = loaded
    out_model, out_encoder = host.run(
        "PaintByExample.LoraLoader", model=model, encoder=encoder, lora_name=LORA_NAME, strength=1.0
    )
    merged_model, _, merged_encoder = _merged(host)
    _assert_close(unet_output(out_model), unet_output(merged_model), "UNet")
    (positive, negative), (want_positive, want_negative) = (
        condition(host, out_encoder),
        condition(host, merged_encoder),
    )
    _assert_close(positive, want_positive, "exemplar condition")
    _assert_close(negative, want_negative, "learned vector")
    assert (want_positive - condition(host, encoder)[0]).abs().max() > 100 * TOLERANCE
