"""The Exemplar Mapper path: stock CLIPVisionLoader -> CLIPVisionEncode (crop "none") -> Exemplar
Mapper, on a full-size OpenAI CLIP ViT-L/14 (random, seeded: tests/host/vit_l_files.py).

Over HTTP, on a user's install: the path runs into the Inpaint Sampler with the Loader's
clip_tower "load" and "skip"; Exemplar Encode on a tower-less encoder says what to use instead; a
CLIP_VISION_OUTPUT of another width fails with a message and the server keeps working.
In-process (the conditioning tensors): the Mapper's positive against Exemplar Encode's on the
same image, the LoRA Loader's exemplar patches on the Mapper path, bad CLIP_VISION_OUTPUTs.

Tolerance: the two paths differ only in preprocessing (ComfyUI rounds the resized exemplar to
8-bit levels, the pack keeps it in float; ``python -m bench.mapper``: at most 0.0075 on the
normalised input, relative L2 of the positive 4e-4 to 1.2e-3, cosine 0.999999+). The test asks
relative L2 < 5e-3 and cosine > 0.9999, and the same negative exactly.
"""

from __future__ import annotations

import numpy as np
import pbe_host
import pytest
import torch
from PIL import Image
from test_bad_inputs import FAILED, OK, run_prompt
from test_nodes import _error

PBE = pbe_host.workflows_build().PUBLISHED_MODEL  # the names conftest's vit_l_pair writes
CLIP = pbe_host.workflows_build().CLIP_VISION_FILE
MAPPER = "PaintByExample.ExemplarMapper"
ENCODE = "PaintByExample.ExemplarEncode"
LOADER = "PaintByExample.Loader"
SKIP = "skip (CLIP Vision + Exemplar Mapper)"
RELATIVE_L2 = 5e-3
COSINE = 0.9999


@pytest.fixture(scope="module")
def server(user_install, vit_l_pair):
    """The session's user install with the ViT-L/14 pair added to its models folder (as the
    templates' tests add it: no second server, the files written once per session)."""
    pbe_host.add_model_files(user_install, vit_l_pair)
    return user_install


def mapper_prompt(clip_tower: str = SKIP) -> dict:
    """Loader + CLIPVisionLoader -> CLIPVisionEncode (crop none) -> Exemplar Mapper -> Inpaint
    Sampler (1 step) -> PreviewImage, on the pack's example images."""
    sampler = {
        "model": ["1", 0],
        "vae": ["1", 1],
        "positive": ["5", 0],
        "negative": ["5", 1],
        "image": ["2", 0],
        "mask": ["3", 0],
        "seed": 0,
        "steps": 1,
        "similarity": 5.0,
        "sampler_name": "ddim",
        "scheduler": "ddim_uniform",
        "denoise": 1.0,
        "context_margin": 0.25,
        "resolution": 0,
        "feather": 4,
        "color_match": False,
    }
    loader = {"model_name": PBE, "weight_dtype": "fp32", "clip_tower": clip_tower}
    return {
        "1": {"class_type": LOADER, "inputs": loader},
        "2": {"class_type": "LoadImage", "inputs": {"image": "pbe_example_source.png"}},
        "3": {
            "class_type": "LoadImageMask",
            "inputs": {"image": "pbe_example_mask.png", "channel": "red"},
        },
        "4": {"class_type": "LoadImage", "inputs": {"image": "pbe_example_exemplar.png"}},
        "8": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP}},
        "9": {
            "class_type": "CLIPVisionEncode",
            "inputs": {"clip_vision": ["8", 0], "image": ["4", 0], "crop": "none"},
        },
        "5": {
            "class_type": MAPPER,
            "inputs": {
                "encoder": ["1", 2],
                "clip_vision_output": ["9", 0],
                "combine": "one per exemplar",
            },
        },
        "6": {"class_type": "PaintByExample.InpaintSampler", "inputs": sampler},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


@pytest.mark.parametrize("clip_tower", ["load", SKIP])
def test_stock_clip_vision_and_the_mapper_edit_over_http(server, clip_tower):
    outcome, message, _ = run_prompt(server, mapper_prompt(clip_tower))
    assert outcome == OK, message


def test_exemplar_encode_on_a_towerless_encoder_says_what_to_use_over_http(server):
    prompt = mapper_prompt(SKIP)
    prompt["5"] = {
        "class_type": ENCODE,
        "inputs": {
            "encoder": ["1", 2],
            "exemplar": ["4", 0],
            "combine": "one per exemplar",
            "resize": "squash",
            "background_fill": 1.0,
        },
    }
    outcome, message, node = run_prompt(server, prompt)
    assert (outcome, node) == (FAILED, "5"), message
    assert "loaded without its CLIP tower" in message, message
    assert "Exemplar Mapper" in message and "clip_tower to 'load'" in message, message


def test_a_clip_output_of_another_width_fails_clearly_and_the_server_keeps_working(server):
    prompt = mapper_prompt()
    # The embedded mini model's encoder is 64 wide; the ViT-L/14 output is 1024 wide.
    prompt["10"] = {
        "class_type": LOADER,
        "inputs": {"model_name": "pbe-mini.safetensors", "weight_dtype": "fp32"},
    }
    prompt["5"]["inputs"]["encoder"] = ["10", 2]
    outcome, message, node = run_prompt(server, prompt)
    assert (outcome, node) == (FAILED, "5"), message
    assert "PaintByExampleInputError" in message and "another width" in message, message
    assert "1024-d" in message and "64-d" in message, message
    outcome, message, _ = run_prompt(server, mapper_prompt())
    assert outcome == OK, message


# ------------------------------------------------------------------------------------------
# In-process: the conditioning tensors
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_l(host, vit_l_pair):
    """(CLIP_VISION, PBE_ENCODER with its tower, PBE_ENCODER without) from the pair's files."""
    import folder_paths

    folder_paths.add_model_folder_path("paint_by_example", str(vit_l_pair / "paint_by_example"))
    folder_paths.add_model_folder_path("clip_vision", str(vit_l_pair / "clip_vision"))
    (clip_vision,) = host.nodes.NODE_CLASS_MAPPINGS["CLIPVisionLoader"]().load_clip(CLIP)
    full = host.run(LOADER, model_name=PBE, weight_dtype="fp32")[2]
    towerless = host.run(LOADER, model_name=PBE, weight_dtype="fp32", clip_tower=SKIP)[2]
    return clip_vision, full, towerless


def example_exemplars() -> torch.Tensor:
    """The templates' exemplar and a random picture of its size: IMAGE [2, H, W, 3]."""
    with Image.open(pbe_host.REPO_ROOT / "example_inputs" / "exemplar.png") as file:
        example = np.asarray(file.convert("RGB"))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, example.shape, np.uint8)
    return torch.from_numpy(np.stack([example, noise])).float() / 255


def clip_output(host, clip_vision, images: torch.Tensor):
    (output,) = host.nodes.NODE_CLASS_MAPPINGS["CLIPVisionEncode"]().encode(
        clip_vision, images, "none"
    )
    return output


def test_the_mappers_conditioning_matches_exemplar_encode_on_the_same_images(host, vit_l):
    clip_vision, full, towerless = vit_l
    images = example_exemplars()
    output = clip_output(host, clip_vision, images)
    for combine, shape in [("one per exemplar", (2, 1, 768)), ("concat tokens", (1, 2, 768))]:
        encoded = host.run(ENCODE, encoder=full, exemplar=images, combine=combine)
        for encoder in (full, towerless):
            mapped = host.run(MAPPER, encoder=encoder, clip_vision_output=output, combine=combine)
            positive, reference = mapped[0][0][0], encoded[0][0][0]
            assert positive.shape == reference.shape == shape
            difference = (positive - reference).norm() / reference.norm()
            cosine = torch.nn.functional.cosine_similarity(
                positive.flatten(), reference.flatten(), dim=0
            )
            assert difference < RELATIVE_L2 and cosine > COSINE, (combine, difference, cosine)
            assert difference > 0  # two preprocessings: an identical result would be suspicious
            assert torch.equal(mapped[1][0][0], encoded[1][0][0])
    with_tower = host.run(MAPPER, encoder=full, clip_vision_output=output)[0][0][0]
    without = host.run(MAPPER, encoder=towerless, clip_vision_output=output)[0][0][0]
    assert torch.equal(with_tower, without)


def test_the_towerless_encoder_holds_no_tower_weights(vit_l):
    _, full, towerless = vit_l
    assert full.has_tower and not towerless.has_tower
    nbytes = {
        name: sum(p.numel() * p.element_size() for p in handle.encoder.parameters())
        for name, handle in (("full", full), ("towerless", towerless))
    }
    assert nbytes["full"] - nbytes["towerless"] == 1_212_710_912  # the ViT-L tower in fp32


def test_exemplar_encode_on_a_towerless_encoder_gives_the_message(host, vit_l):
    message = _error(host, ENCODE, encoder=vit_l[2], exemplar=example_exemplars())
    assert "loaded without its CLIP tower" in message and "Exemplar Mapper" in message


def fake_output(host, hidden: object):
    """A CLIP_VISION_OUTPUT (ComfyUI's own class) holding ``hidden`` as its last hidden state."""
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    output["last_hidden_state"] = hidden
    return output


@pytest.mark.parametrize(
    ("hidden", "words"),
    [
        (torch.randn(1, 257, 1280), ["another width", "1280-d", "ViT-H/14", "ViT-L/14 (1024-d"]),
        (torch.randn(1, 729, 1152), ["another width", "1152-d", "SigLIP", "ViT-L/14 (1024-d"]),
        (torch.randn(1, 577, 1024), ["577 tokens", "expected 257", "another input size"]),
        (torch.full((1, 257, 1024), float("nan")), ["NaN"]),
        (torch.randn(257, 1024), ["[257, 1024]", "[B, tokens, 1024]"]),
    ],
    ids=["vit-h", "siglip", "vit-l-336", "nan", "no-batch"],
)
def test_bad_clip_vision_outputs_are_named(host, vit_l, hidden, words):
    message = _error(host, MAPPER, encoder=vit_l[2], clip_vision_output=fake_output(host, hidden))
    for word in words:
        assert word in message, (word, message)


def test_something_that_is_not_a_clip_vision_output_is_named(host, vit_l):
    message = _error(host, MAPPER, encoder=vit_l[2], clip_vision_output=torch.zeros(1, 257, 1024))
    assert "must be the CLIP_VISION_OUTPUT of the stock CLIPVisionEncode" in message
    assert "got Tensor" in message


def test_the_lora_loaders_exemplar_patches_apply_on_the_mapper_path(host, loaded, tmp_path):
    """The tiny model (its own 32-wide tower stands in for CLIP): the Mapper's output on a
    LoRA'd encoder is Exemplar Encode's on it, and differs from the plain encoder's."""
    import folder_paths
    from test_lora_host import LORA_A, lora_metadata, lora_tensors

    from exemplar_core.lora import save_lora

    folder_paths.add_model_folder_path("loras", str(tmp_path))
    save_lora(lora_tensors(1), lora_metadata(), tmp_path / LORA_A)
    model, _, encoder = loaded
    _, patched = host.run(
        "PaintByExample.LoraLoader", model=model, encoder=encoder, lora_name=LORA_A
    )
    images = example_exemplars()
    pixels = host.module("exemplar_core.preprocess").preprocess_exemplar(images, encoder.config)
    seen = []
    tower = encoder.encoder.tower
    hook = tower.ln_post.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        tower(pixels)
    finally:
        hook.remove()
    output = fake_output(host, seen[0])
    mapped = host.run(MAPPER, encoder=patched, clip_vision_output=output)
    encoded = host.run(ENCODE, encoder=patched, exemplar=images)
    plain = host.run(MAPPER, encoder=encoder, clip_vision_output=output)
    for slot in (0, 1):  # positive, negative (the LoRA patches the learned vector too)
        assert torch.allclose(mapped[slot][0][0], encoded[slot][0][0], atol=1e-6)
        assert not torch.allclose(mapped[slot][0][0], plain[slot][0][0], atol=1e-3)


def test_a_clip_vision_file_exported_from_the_checkpoint_serves_the_mapper(
    host, vit_l, vit_l_pair, tmp_path
):
    """``python -m exemplar_core export-clip-vision``: ComfyUI's own loader reads the file as a
    ViT-L/14 and the Mapper's conditioning from it is the pair's clip_vision file's."""
    import comfy.clip_vision

    from exemplar_core.cli import main

    src = vit_l_pair / "paint_by_example" / PBE
    dst = tmp_path / "exported.safetensors"
    assert main(["export-clip-vision", str(src), str(dst)]) == 0
    exported = comfy.clip_vision.load(str(dst))
    assert exported is not None and exported.image_size == 224
    images = example_exemplars()
    mapped = [
        host.run(MAPPER, encoder=vit_l[2], clip_vision_output=clip_output(host, cv, images))
        for cv in (exported, vit_l[0])
    ]
    assert torch.equal(mapped[0][0][0][0], mapped[1][0][0][0])
