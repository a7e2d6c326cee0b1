"""Crop For Exemplar Edit, Stitch Exemplar Edit and the sampler's mask grow/blur, over HTTP on the
user's install (the pack copied into ``custom_nodes/``, prompts queued with ``POST /prompt``).

The split path (Crop -> stock InpaintModelConditioning + EmptyLatentImage -> KSampler ->
VAEDecode -> Stitch) is the Inpaint Sampler's edit: the sampled latents (SaveLatent, full floats)
and the saved images are compared bit for bit.
"""

from __future__ import annotations

import io
import urllib.parse

import numpy as np
import pytest
import torch
from PIL import Image

from exemplar_core.headless import Client, wait_history

MODEL = "pbe-mini.safetensors"  # 64 px native: a 64 x 64 window, not resized from the source
HEIGHT, WIDTH = 96, 128
BOX = (30, 50, 60, 84)  # rows y0:y1, columns x0:x1 of the edit mask
SEED, STEPS, SIMILARITY = 5, 3, 5.0
WINDOW = 64
# EmptyLatentImage makes a latent of width / 8; pbe-mini's VAE downsamples by 4, so the window's
# latent (16 x 16) is EmptyLatentImage's of twice the window's size. (The published model: x 1.)
EMPTY_LATENT_SIZE = WINDOW * 8 // 4


def _write_inputs(folder, name: str, low: int) -> dict[str, str]:
    """source (pixels low..255), mask and exemplar PNGs in the input folder, under ``name``."""
    rng = np.random.default_rng(low + 1)
    y0, y1, x0, x1 = BOX
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[y0:y1, x0:x1] = 255
    files = {
        "source": rng.integers(low, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
        "mask": mask,
        "exemplar": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
    }
    names = {}
    for kind, pixels in files.items():
        names[kind] = f"crop_stitch_{name}_{kind}.png"
        Image.fromarray(pixels).save(folder / names[kind])
    return names


def _prompt(files: dict[str, str], grow: int = 0, blur: int = 0, tag: str = "") -> dict:
    """The pack's sampler and the split path on the same inputs, each saving image and latent."""
    encode = {"encoder": ["1", 2], "exemplar": ["4", 0], "combine": "one per exemplar"}
    encode.update(resize="squash", background_fill=1.0)
    window = {"context_margin": 0.25, "resolution": 0, "feather": 16}
    window.update(mask_grow=grow, mask_blur=blur)
    sampler = dict(model=["1", 0], vae=["1", 1], positive=["5", 0], negative=["5", 1])
    sampler.update(image=["2", 0], mask=["3", 0], seed=SEED, steps=STEPS, similarity=SIMILARITY)
    sampler.update(sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0, color_match=False)
    sampler.update(window)
    ksampler = dict(model=["1", 0], seed=SEED, steps=STEPS, cfg=SIMILARITY)  # cfg = similarity
    ksampler.update(sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0)
    ksampler.update(positive=["11", 0], negative=["11", 1], latent_image=["12", 0])
    conditioning = dict(positive=["5", 0], negative=["5", 1], vae=["1", 1])
    conditioning.update(pixels=["10", 0], mask=["10", 1], noise_mask=False)
    nodes = {
        "1": ("PaintByExample.Loader", {"model_name": MODEL, "weight_dtype": "fp32"}),
        "2": ("LoadImage", {"image": files["source"]}),
        "3": ("LoadImageMask", {"image": files["mask"], "channel": "red"}),
        "4": ("LoadImage", {"image": files["exemplar"]}),
        "5": ("PaintByExample.ExemplarEncode", encode),
        "6": ("PaintByExample.InpaintSampler", sampler),
        "7": ("SaveImage", {"images": ["6", 0], "filename_prefix": f"pack{tag}"}),
        "8": ("SaveLatent", {"samples": ["6", 1], "filename_prefix": f"latents/pack{tag}"}),
        "10": (
            "PaintByExample.CropForEdit",
            {"image": ["2", 0], "mask": ["3", 0], "model": ["1", 0], "vae": ["1", 1], **window},
        ),
        "11": ("InpaintModelConditioning", conditioning),
        "12": (
            "EmptyLatentImage",
            {"width": EMPTY_LATENT_SIZE, "height": EMPTY_LATENT_SIZE, "batch_size": 1},
        ),
        "13": ("KSampler", ksampler),
        "14": ("VAEDecode", {"samples": ["13", 0], "vae": ["1", 1]}),
        "15": (
            "PaintByExample.StitchEdit",
            {"crop": ["10", 2], "edited": ["14", 0], "color_match": False},
        ),
        "16": ("SaveImage", {"images": ["15", 0], "filename_prefix": f"split{tag}"}),
        "17": ("SaveLatent", {"samples": ["13", 0], "filename_prefix": f"latents/split{tag}"}),
        "18": ("SaveImage", {"images": ["10", 0], "filename_prefix": f"window{tag}"}),
        "19": ("MaskToImage", {"mask": ["10", 1]}),
        "20": ("SaveImage", {"images": ["19", 0], "filename_prefix": f"window_mask{tag}"}),
    }
    return {key: {"class_type": kind, "inputs": inputs} for key, (kind, inputs) in nodes.items()}


def _run(server, prompt: dict) -> dict[str, list]:
    """Queue ``prompt``; node id -> its saved images (uint8 arrays) or latents (tensors)."""
    from safetensors.torch import load

    client = Client(server.url)
    entry = wait_history(client, client.queue(prompt), 300.0, quiet=True)
    assert entry["status"]["status_str"] == "success", entry["status"]
    results: dict[str, list] = {}
    for node_id, output in entry["outputs"].items():
        for kind in ("images", "latents"):
            for item in output.get(kind, []):
                query = urllib.parse.urlencode(
                    {"filename": item["filename"], "subfolder": item["subfolder"], "type": "output"}
                )
                data = client.get_bytes(f"/view?{query}")
                if kind == "images":
                    found = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                else:
                    found = load(data)["latent_tensor"]
                results.setdefault(node_id, []).append(found)
    return results


def _first(results: dict[str, list]) -> dict[str, object]:
    return {node_id: found[0] for node_id, found in results.items()}


@pytest.fixture(scope="module")
def bright(user_install) -> dict[str, str]:
    return _write_inputs(user_install.input_directory, "bright", low=64)  # pixels >= 0.25


@pytest.mark.parametrize("low", [64, 0], ids=["pixels from 0.25", "full range"])
def test_split_path_through_stock_nodes_is_the_samplers_edit_bit_for_bit(user_install, low):
    """Below 0.25 the stock node's greyed-out window, (x - 0.5) * keep + 0.5, differs from the
    sampler's x * keep + 0.5 * edit in the last bit; ComfyUI's VAE encodes 2 x - 1, where the
    two round to the same number, so the full range is bit for bit the same edit too."""
    files = _write_inputs(user_install.input_directory, f"split{low}", low=low)
    out = _first(_run(user_install, _prompt(files, tag=f"_a{low}")))
    assert out["17"].shape == (1, 4, WINDOW // 4, WINDOW // 4)
    assert torch.equal(out["17"], out["8"]), "the sampled latents differ"
    assert np.array_equal(out["16"], out["7"]), "the stitched images differ"
    source = np.asarray(Image.open(user_install.input_directory / files["source"]))
    y0, y1, x0, x1 = BOX
    assert not np.array_equal(out["16"][y0:y1, x0:x1], source[y0:y1, x0:x1])
    outside = np.ones((HEIGHT, WIDTH), bool)
    outside[y0 - 16 : y1 + 16, x0 - 16 : x1 + 16] = False  # the mask and its feather band
    assert np.array_equal(out["16"][outside], source[outside])
    assert out["18"].shape == (WINDOW, WINDOW, 3) and out["20"].shape == (WINDOW, WINDOW, 3)
    assert set(np.unique(out["20"])) == {0, 255}  # the window mask is binary


def test_mask_grow_and_blur_enlarge_the_repainted_area_the_same_on_both_paths(user_install, bright):
    plain = _first(_run(user_install, _prompt(bright, tag="_b")))
    grown = _first(_run(user_install, _prompt(bright, grow=8, blur=3, tag="_c")))
    assert torch.equal(grown["17"], grown["8"]) and np.array_equal(grown["16"], grown["7"])
    assert not torch.equal(grown["8"], plain["8"])
    source = np.asarray(Image.open(user_install.input_directory / bright["source"]))
    y0, y1, x0, x1 = BOX
    # a larger share of the (larger, resized) window is repainted
    assert (grown["20"][..., 0] > 127).sum() > 1.5 * (plain["20"][..., 0] > 127).sum()
    outside = np.ones((HEIGHT, WIDTH), bool)  # grow 8 + feather 16: the source beyond
    outside[y0 - 24 : y1 + 24, x0 - 24 : x1 + 24] = False
    assert np.array_equal(grown["7"][outside], source[outside])
    # 17 to 20 px right of the mask: beyond the plain edit's feather band, inside the grown one
    band = (slice(y0, y1), slice(x1 + 16, x1 + 20))
    assert np.array_equal(plain["7"][band], source[band])
    assert not np.array_equal(grown["7"][band], source[band])


def test_stitch_puts_one_crop_into_another_image_and_variants_into_copies(user_install, bright):
    y0, y1, x0, x1 = BOX
    window = {"context_margin": 0.25, "resolution": 0, "feather": 4, "mask_grow": 0}
    crop = {"image": ["2", 0], "mask": ["3", 0], **window, "mask_blur": 0}
    nodes = {
        "2": ("LoadImage", {"image": bright["source"]}),
        "3": ("LoadImageMask", {"image": bright["mask"], "channel": "red"}),
        "10": ("PaintByExample.CropForEdit", crop),
        "11": ("EmptyImage", {"width": 50, "height": 30, "batch_size": 3, "color": 0xFF0000}),
        "12": ("EmptyImage", {"width": WIDTH, "height": HEIGHT, "batch_size": 1, "color": 0}),
        "13": (
            "PaintByExample.StitchEdit",
            {"crop": ["10", 2], "edited": ["11", 0], "color_match": False},
        ),
        "14": (
            "PaintByExample.StitchEdit",
            {"crop": ["10", 2], "edited": ["10", 0], "color_match": False},
        ),
        "15": (
            "PaintByExample.StitchEdit",
            {"crop": ["10", 2], "edited": ["11", 0], "image": ["12", 0], "color_match": False},
        ),
        "16": ("SaveImage", {"images": ["13", 0], "filename_prefix": "variants"}),
        "17": ("SaveImage", {"images": ["14", 0], "filename_prefix": "unchanged"}),
        "18": ("SaveImage", {"images": ["15", 0], "filename_prefix": "into"}),
    }
    prompt = {key: {"class_type": kind, "inputs": inputs} for key, (kind, inputs) in nodes.items()}
    found = _run(user_install, prompt)
    assert len(found["16"]) == 3  # 3 variants of one crop: 3 images
    out = _first(found)
    source = np.asarray(Image.open(user_install.input_directory / bright["source"]))
    # the window itself stitched back (96 px -> 512 and back, without a model): the source
    # outside the mask's 4 px feather band, bit for bit
    outside = np.ones((HEIGHT, WIDTH), bool)
    outside[y0 - 4 : y1 + 4, x0 - 4 : x1 + 4] = False
    assert np.array_equal(out["17"][outside], source[outside])
    assert out["17"].shape == source.shape
    assert (out["16"][y0:y1, x0:x1] >= [254, 0, 0]).all()  # a red window resized onto the mask
    assert (out["16"][y0:y1, x0:x1, 1:] == 0).all()
    assert np.array_equal(out["16"][: y0 - 4], source[: y0 - 4])  # feather 4
    assert (out["18"][y0:y1, x0:x1, 0] >= 254).all() and not out["18"][: y0 - 4].any()
