"""Paint-by-Example LoRA files in a real ComfyUI 0.3.64: which layout the stock loader applies,
the pack's LoRA Loader node, and both over HTTP.

The layout, as measured here: ComfyUI's LoRA key table for a MODEL
(``comfy.lora.model_lora_keys_unet``) holds two kohya names for each UNet weight, the
diffusers-named one (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``,
through ``comfy.utils.unet_to_diffusers`` of the MODEL's UNet config) and the LDM-named one
(``lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q``), both pointing at the same LDM
weight. The pack's files use the diffusers names (``exemplar_core.lora.unet_key``); the stock
``LoraLoaderModelOnly`` applies every one of them to the pack's MODEL and logs the
``pbe_exemplar.`` keys, and only those, as "lora key not loaded".

Equality: the UNet of a MODEL patched by the stock loader, and by the pack's node, against the
same checkpoint merged by ``exemplar_core.lora.apply_lora`` and built as a MODEL
(``nodes.model_builder.comfy_model``), fp32 on the CPU, on fixed random inputs: max abs
difference < 1e-4 on outputs of about unit size. Measured: 0 (both add
``strength * alpha / rank * up @ down`` to the fp32 weights with the same arithmetic); the
tolerance leaves room for another order of float operations on other hardware.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pbe_host
import pytest
import torch
from PIL import Image
from test_bad_inputs import FAILED, OK, REFUSED, run_prompt
from test_nodes import _error

RANK = 4
ALPHA = 2.0
UNET_GROUPS = ("attention", "conv_in")
LORA_A = "pbe-test-a.safetensors"
LORA_B = "pbe-test-b.safetensors"
NODE = "PaintByExample.LoraLoader"
TOLERANCE = 1e-4  # fp32, see the module docstring


def lora_tensors(seed: int) -> dict[str, torch.Tensor]:
    """A LoRA for the tiny model: random non-zero adapters on every UNet attention projection
    and conv_in, LoRA on the mapper's linears, differences for the exemplar head."""
    from exemplar_core.lora import (
        exemplar_key,
        lora_pair,
        mapper_target_modules,
        unet_key,
        unet_target_modules,
    )

    base = pbe_host.tiny_model()
    generator = torch.Generator().manual_seed(seed)

    def random(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    def pair(module: torch.nn.Module, stem: str) -> dict[str, torch.Tensor]:
        out, inp, *kernel = module.weight.shape
        ones = [1] * len(kernel)
        return lora_pair(stem, random(RANK, inp, *kernel), random(out, RANK, *ones), ALPHA)

    tensors: dict[str, torch.Tensor] = {}
    for path in unet_target_modules(base.unet, UNET_GROUPS):
        tensors.update(pair(base.unet.get_submodule(path), unet_key(path)))
    encoder = base.encoder
    for path in mapper_target_modules(encoder):
        tensors.update(pair(encoder.get_submodule(path), exemplar_key(path)))
    for name in ("final_ln", "proj_out"):
        module = encoder.get_submodule(name)
        tensors[f"{exemplar_key(name)}.diff"] = random(*module.weight.shape)
        tensors[f"{exemplar_key(name)}.diff_b"] = random(*module.bias.shape)
    vector = exemplar_key("learnable_vector")
    tensors[f"{vector}.diff"] = random(*encoder.learnable_vector.shape)
    return tensors


def lora_metadata() -> dict[str, str]:
    return {
        "rank": str(RANK),
        "alpha": str(ALPHA),
        "unet_modules": json.dumps(list(UNET_GROUPS)),
        "exemplar": "lora",
        "base_model": pbe_host.TINY_MODEL_NAME,
    }


def write_loras(folder: Path) -> Path:
    """The test's LoRA files, good and bad, in ``folder`` (a ComfyUI models/loras)."""
    from exemplar_core.lora import lora_pair, save_lora

    folder.mkdir(parents=True, exist_ok=True)
    save_lora(lora_tensors(1), lora_metadata(), folder / LORA_A)
    save_lora(lora_tensors(2), lora_metadata(), folder / LORA_B)
    data = (folder / LORA_A).read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    generator = torch.Generator().manual_seed(3)
    text = lora_pair(  # an SD 1.5 text-encoder LoRA: CLIP-L attention, 768 wide
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        torch.randn(RANK, 768, generator=generator),
        torch.randn(768, RANK, generator=generator),
        ALPHA,
    )
    save_lora(text, {}, folder / "sd15-text.safetensors")
    sdxl = {  # an SDXL UNet LoRA: its second transformer block, 2048-wide cross-attention
        **lora_pair(
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q",
            torch.randn(RANK, 640, generator=generator),
            torch.randn(640, RANK, generator=generator),
            ALPHA,
        ),
        **lora_pair(
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
            torch.randn(RANK, 2048, generator=generator),
            torch.randn(640, RANK, generator=generator),
            ALPHA,
        ),
    }
    save_lora(sdxl, {}, folder / "sdxl.safetensors")
    sd15 = lora_pair(  # an SD 1.5 UNet LoRA on a layer the tiny UNet has, at SD 1.5's width
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
        torch.randn(RANK, 768, generator=generator),
        torch.randn(320, RANK, generator=generator),
        ALPHA,
    )
    save_lora(sd15, {"ss_base_model_version": "sd_v1"}, folder / "sd15-unet.safetensors")
    return folder


# ------------------------------------------------------------------------------------------
# In-process: the layout and the node
# ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _unpatched_afterwards(host):
    """Each test leaves the shared modules with their own weights: the Loader's MODEL and
    encoder share their torch modules with every patched clone, and other tests read them
    without loading (ComfyUI's unload restores the weights a patcher replaced)."""
    yield
    import comfy.model_management as mm

    mm.unload_all_models()


@pytest.fixture(scope="module")
def loras(host, tmp_path_factory) -> Path:
    import folder_paths

    folder = write_loras(tmp_path_factory.mktemp("loras"))
    folder_paths.add_model_folder_path("loras", str(folder))
    return folder


def merged_model(host, *applied: tuple[Path, float]):
    """The tiny checkpoint with LoRAs merged by the core, as a native fp32 MODEL and encoder."""
    from exemplar_core.checkpoint import checkpoint_from_model
    from exemplar_core.lora import apply_lora, read_lora

    model = pbe_host.tiny_model()
    for path, strength in applied:
        apply_lora(model, read_lora(path), strength)
    ckpt = checkpoint_from_model(model)
    builder = host.module("nodes.model_builder")
    return builder.comfy_model(ckpt, torch.float32), builder.comfy_encoder(ckpt, torch.float32)


def unet_output(patcher) -> torch.Tensor:
    """The UNet of a MODEL, patches applied, on fixed random inputs: [1, 4, 8, 8]."""
    import comfy.model_management as mm

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 9, 8, 8, generator=generator)
    context = torch.randn(1, 1, 32, generator=generator)
    mm.load_model_gpu(patcher)
    unet = patcher.model.diffusion_model
    return unet(x, timesteps=torch.tensor([500.0]), context=context).clone()


def condition(host, handle) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) of Exemplar Encode on a fixed image."""
    image = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(5))
    positive, negative, _ = host.run(
        "PaintByExample.ExemplarEncode", encoder=handle, exemplar=image
    )
    return positive[0][0].clone(), negative[0][0].clone()


def stock_lora(host, model, name: str, strength: float = 1.0):
    return host.nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)[0]


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    difference = (actual - expected).abs().max().item()
    print(f"max abs difference {difference:.3g} (largest value {expected.abs().max():.3g})")
    assert difference < TOLERANCE, f"max abs difference {difference:.3g}"


def test_comfyui_maps_both_kohya_names_to_the_same_ldm_weight(host, loaded):
    import comfy.lora

    model, _, _ = loaded
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    diffusers_name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    ldm_name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    ldm_key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    assert key_map[diffusers_name] == key_map[ldm_name] == ldm_key
    assert key_map["lora_unet_conv_in"] == "diffusion_model.input_blocks.0.0.weight"


def test_stock_loader_applies_every_unet_key_and_skips_only_the_exemplar_part(
    host, loaded, loras, caplog
):
    import comfy.lora

    from exemplar_core.lora import read_lora

    model, _, _ = loaded
    lora = read_lora(loras / LORA_A)
    with caplog.at_level(logging.WARNING):
        patched = stock_lora(host, model, LORA_A)
    not_loaded = {
        r.getMessage().split(": ", 1)[1]
        for r in caplog.records
        if r.getMessage().startswith("lora key not loaded")
    }
    exemplar_keys = {k for k in lora.tensors if k.startswith("pbe_exemplar.")}
    assert not_loaded == exemplar_keys
    assert not any("NOT LOADED" in r.getMessage() for r in caplog.records)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    stems = lora.unet_stems()
    assert len(stems) == len({k for k in lora.tensors if k.startswith("lora_unet_")}) // 3
    assert set(patched.patches) == {key_map[stem] for stem in stems}


def test_stock_loader_output_equals_the_core_merge(host, loaded, loras):
    model, _, _ = loaded
    reference, _ = merged_model(host, (loras / LORA_A, 1.0))
    expected = unet_output(reference)
    actual = unet_output(stock_lora(host, model, LORA_A))
    base = unet_output(model)
    assert_close(actual, expected)
    assert (actual - base).abs().max() > 100 * TOLERANCE  # the LoRA changed the output


def test_node_model_equals_the_stock_loader_and_encoder_equals_the_core(
    host, loaded, loras, caplog
):
    model, _, encoder = loaded
    base_condition = condition(host, encoder)
    base_output = unet_output(model)
    with caplog.at_level(logging.WARNING):
        out_model, out_encoder = host.run(
            NODE, model=model, encoder=encoder, lora_name=LORA_A, strength=1.0
        )
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert torch.equal(unet_output(out_model), unet_output(stock_lora(host, model, LORA_A)))
    reference_model, reference_encoder = merged_model(host, (loras / LORA_A, 1.0))
    assert_close(unet_output(out_model), unet_output(reference_model))
    positive, negative = condition(host, out_encoder)
    expected_positive, expected_negative = condition(host, reference_encoder)
    assert_close(positive, expected_positive)
    assert_close(negative, expected_negative)  # the learned vector's difference is applied
    assert (positive - base_condition[0]).abs().max() > 100 * TOLERANCE
    assert (negative - base_condition[1]).abs().max() > 100 * TOLERANCE
    # The inputs are unchanged (ComfyUI caches them for other nodes).
    assert torch.equal(condition(host, encoder)[0], base_condition[0])
    assert torch.equal(condition(host, encoder)[1], base_condition[1])
    assert torch.equal(unet_output(model), base_output)


def test_node_strength_and_stacking_equal_the_core(host, loaded, loras):
    model, _, encoder = loaded
    once = host.run(NODE, model=model, encoder=encoder, lora_name=LORA_A, strength=0.5)
    twice = host.run(NODE, model=once[0], encoder=once[1], lora_name=LORA_B, strength=1.0)
    for (out_model, out_encoder), applied in (
        (once, [(loras / LORA_A, 0.5)]),
        (twice, [(loras / LORA_A, 0.5), (loras / LORA_B, 1.0)]),
    ):
        reference_model, reference_encoder = merged_model(host, *applied)
        assert_close(unet_output(out_model), unet_output(reference_model))
        expected = condition(host, reference_encoder)
        for actual, wanted in zip(condition(host, out_encoder), expected, strict=True):
            assert_close(actual, wanted)


# A bad LoRA file -> words its message must hold (besides its name).
BAD_FILES = {
    "truncated.safetensors": ("truncated or corrupt",),
    "sd15-text.safetensors": ("text-encoder", "no text encoder"),
    "sdxl.safetensors": ("is an SDXL LoRA", "2048-wide cross-attention", "tiny-pbe.safetensors"),
    "sd15-unet.safetensors": ("does not fit", "lora_down [4, 768]", "tiny-pbe.safetensors"),
}


def test_node_refuses_bad_input_with_clear_messages(host, loaded, loras):
    model, vae, encoder = loaded
    good = dict(model=model, encoder=encoder, lora_name=LORA_A, strength=1.0)
    not_pbe = model.clone()
    not_pbe.model_options.pop("paint_by_example")

    def refused(**changes) -> str:
        return _error(host, NODE, **{**good, **changes})

    message = refused(model=not_pbe)
    assert "got a MODEL of type PbEModelConfig" in message
    assert "MODEL output of the Paint-by-Example Loader" in message
    assert "PBE_ENCODER" in refused(encoder=vae)
    for value in (float("nan"), float("inf")):
        assert "strength must be a finite number" in refused(strength=value)
    assert "missing.safetensors" in refused(lora_name="missing.safetensors")
    for name, words in BAD_FILES.items():
        message = refused(lora_name=name)
        for word in (name, *words):
            assert word in message, (name, word, message)


# ------------------------------------------------------------------------------------------
# Over HTTP: a user's prompt on a running server
# ------------------------------------------------------------------------------------------

TEMPLATE = pbe_host.REPO_ROOT / "workflows" / "api" / "basic_exemplar_edit.json"
SIZE = 64
SD15_UNET = "tiny-sd15-unet.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    base = tmp_path_factory.mktemp("lora_server")
    write_loras(base / "comfy" / "models" / "loras")
    write_sd15_unet(base / "comfy" / "models" / "diffusion_models" / SD15_UNET)
    inputs = base / "comfy" / "input"
    inputs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), np.uint8)).save(inputs / "source.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:40, 16:40] = 255
    Image.fromarray(mask).save(inputs / "mask.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(inputs / "exemplar.png")
    srv = pbe_host.start_server(base, models_dir)
    yield srv
    srv.stop()


def lora_prompt(**lora_inputs) -> dict:
    """The basic template's API twin with the LoRA Loader between the Loader and its users:
    the tiny model in fp32, 1 step at 64 px, the result previewed."""
    prompt = json.loads(TEMPLATE.read_text())
    prompt["1"]["inputs"].update(model_name=pbe_host.TINY_MODEL_NAME, weight_dtype="fp32")
    prompt["2"]["inputs"]["image"] = "source.png"
    prompt["3"]["inputs"]["image"] = "mask.png"
    prompt["4"]["inputs"]["image"] = "exemplar.png"
    prompt["6"]["inputs"].update(steps=1, resolution=SIZE, feather=4)
    inputs = {"model": ["1", 0], "encoder": ["1", 2], "lora_name": LORA_A, "strength": 1.0}
    prompt["30"] = {"class_type": NODE, "inputs": {**inputs, **lora_inputs}}
    prompt["5"]["inputs"]["encoder"] = ["30", 1]
    prompt["6"]["inputs"]["model"] = ["30", 0]
    for node_id in [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]:
        prompt[node_id] = {"class_type": "PreviewImage", "inputs": prompt[node_id]["inputs"]}
    return prompt


def test_node_is_listed_with_its_inputs_and_the_loras_folder(server):
    info = server.get(f"/object_info/{NODE}")[NODE]
    assert info["input_order"]["required"] == ["model", "encoder", "lora_name", "strength"]
    assert info["output"] == ["MODEL", "PBE_ENCODER"]
    names = info["input"]["required"]["lora_name"][1]["options"]
    assert LORA_A in names and LORA_B in names
    stock = server.get("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]
    assert LORA_A in stock["input"]["required"]["lora_name"][0]  # the same folder


def test_prompt_with_the_node_and_with_the_stock_loader_runs(server):
    assert run_prompt(server, lora_prompt()) == (OK, "", None)
    stacked = lora_prompt(strength=0.5)
    stacked["31"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["30", 0], "lora_name": LORA_B, "strength_model": 1.0},
    }
    stacked["6"]["inputs"]["model"] = ["31", 0]
    assert run_prompt(server, stacked) == (OK, "", None)


def write_sd15_unet(path: Path) -> Path:
    """A small UNet that ComfyUI's UNETLoader detects as SD 1.5 (320 channels, 768-wide
    context; one level, no middle block): 19M parameters, 37 MB in fp16."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from exemplar_core.checkpoint.keymap import unet_diffusers_to_ldm

    config = dict(
        in_channels=4,
        out_channels=4,
        block_out_channels=(320,),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        mid_block_type=None,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config)
    ldm = unet_diffusers_to_ldm(unet.state_dict(), config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in ldm.items()}, str(path))
    return path


def sd15_model(prompt: dict) -> None:
    """The LoRA Loader's MODEL from the stock UNETLoader's SD 1.5 UNet."""
    prompt["32"] = {
        "class_type": "UNETLoader",
        "inputs": {"unet_name": SD15_UNET, "weight_dtype": "default"},
    }
    prompt["30"]["inputs"]["model"] = ["32", 0]


BAD_HTTP = [
    ("strength NaN", {"strength": float("nan")}, ("strength must be a finite number",)),
    ("strength 'nan'", {"strength": "nan"}, ("strength must be a finite number",)),
    ("strength inf", {"strength": "inf"}, ("strength", "bigger than max")),
    *((name, {"lora_name": name}, (name, *words)) for name, words in BAD_FILES.items()),
    ("SD 1.5 MODEL", sd15_model, ("got a MODEL of type SD15", "Paint-by-Example Loader")),
]


@pytest.mark.parametrize("edit, words", [c[1:] for c in BAD_HTTP], ids=[c[0] for c in BAD_HTTP])
def test_bad_lora_input_is_a_node_error_and_the_server_keeps_working(server, edit, words):
    prompt = lora_prompt()
    if callable(edit):
        edit(prompt)
    else:
        prompt["30"]["inputs"].update(edit)
    outcome, message, node = run_prompt(server, prompt)
    assert outcome in (FAILED, REFUSED), message
    if outcome == FAILED:  # refused by the node, not a crash inside torch or ComfyUI
        assert node == "30" and "PaintByExampleInputError" in message, message
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    assert server.process.poll() is None
    assert run_prompt(server, lora_prompt(strength=0.25))[0] == OK
