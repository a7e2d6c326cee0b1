"""Bad input through a real ComfyUI server, as a headless user queues it (``POST /prompt``).

One server (started as a user's install: a copy of the pack in ``custom_nodes/``) serves the
whole table. Every case is refused with a message that names what was wrong and what is
expected, either at validation (HTTP 400) or as the node's execution error in ``/history``, or
(marked ``OK``) is handled and succeeds. After each case the server is alive, the next good
prompt succeeds, and no file of the user's (input folder, model folders) has changed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pbe_host
import pytest
import torch
from hostile import RunsCode, write_huge_header
from PIL import Image

from exemplar_core.headless import Client, wait_history

MODEL = "pbe-mini.safetensors"  # the embedded model the templates use (64 px native)
TEMPLATE = pbe_host.REPO_ROOT / "workflows" / "api" / "basic_exemplar_edit.json"
NAN = float("nan")
SEED_MAX = 2**64 - 1
REFUSED = "400"  # refused by POST /prompt's validation
FAILED = "error"  # queued, then the node fails with an execution error
OK = "ok"  # handled: the prompt succeeds

# Names of the user's files the cases use, written before the server starts.
IMAGES = {
    "source.png": lambda rng: rng.integers(0, 255, (64, 64, 3), np.uint8),
    "mask.png": lambda rng: _square((64, 64), 16, 40),
    "exemplar.png": lambda rng: rng.integers(0, 255, (40, 40, 3), np.uint8),
    "mask32.png": lambda rng: _square((32, 32), 8, 20),
    "empty_mask.png": lambda rng: np.zeros((64, 64), np.uint8),
    "empty_mask40.png": lambda rng: np.zeros((40, 40), np.uint8),
    "full_mask.png": lambda rng: np.full((64, 64), 255, np.uint8),
    "exemplar12.png": lambda rng: rng.integers(0, 255, (12, 12, 3), np.uint8),
    "pixel.png": lambda rng: rng.integers(0, 255, (1, 1, 3), np.uint8),
    "pixel_mask.png": lambda rng: np.full((1, 1), 255, np.uint8),
    "dot_mask.png": lambda rng: _square((64, 64), 30, 31),
    "large_mask.png": lambda rng: _square((2048, 2048), 1000, 1040),
}
MARKER = "pickle_ran"  # the folder the malicious pickle would create if it ran


def _square(shape: tuple[int, int], start: int, stop: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[start:stop, start:stop] = 255
    return mask


def _write_models(folder: Path, marker: Path) -> None:
    """The broken model files a user may have in models/paint_by_example."""
    from exemplar_core.checkpoint import load_checkpoint, save_single_file

    folder.mkdir(parents=True, exist_ok=True)
    mini = pbe_host.REPO_ROOT / "models" / MODEL
    (folder / "notes.safetensors").write_text("not a model, just a text file\n")
    (folder / "empty.safetensors").write_bytes(b"")
    data = mini.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    write_huge_header(folder / "huge-header.safetensors", 2**50)
    with open(folder / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": RunsCode(str(marker))}, f)
    for part in ("encoder", "unet", "vae"):
        ckpt = load_checkpoint(mini)
        weights = getattr(ckpt, part)
        if part == "vae":  # the decoder: encoding works, decoding gives NaN
            key = next(k for k in weights if k.startswith("decoder.") and k.endswith("weight"))
        else:
            key = next(k for k in weights if k.endswith("weight"))
        weights[key] = torch.full_like(weights[key], NAN)
        save_single_file(ckpt, folder / f"nan-{part}.safetensors")


@dataclass
class Install:
    server: pbe_host.Server
    user_models: Path
    marker: Path

    @property
    def watched(self) -> list[Path]:
        pack_models = self.server.base_directory / "custom_nodes" / pbe_host.PACK_FOLDER / "models"
        return [self.server.input_directory, self.user_models, pack_models]


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Install:
    base = tmp_path_factory.mktemp("bad_inputs")
    comfy = base / "ComfyUI"
    rng = np.random.default_rng(0)
    (comfy / "input").mkdir(parents=True)
    for name, make in IMAGES.items():
        Image.fromarray(make(rng)).save(comfy / "input" / name)
    user_models = comfy / "models" / "paint_by_example"
    marker = base / MARKER
    _write_models(user_models, marker)
    server = pbe_host.start_user_install(base)
    yield Install(server, user_models, marker)
    server.stop()


# ------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------


def good_prompt(seed: int = 0) -> dict:
    """The basic template's API twin (Loader -> Exemplar Encode -> Inpaint Sampler) on the cases'
    images: fp32, 1 step at 64 px, its result previewed instead of saved."""
    prompt = json.loads(TEMPLATE.read_text())
    inputs = {
        "1.model_name": MODEL,
        "1.weight_dtype": "fp32",
        "2.image": "source.png",
        "3.image": "mask.png",
        "4.image": "exemplar.png",
        "6.seed": seed,
        "6.steps": 1,
        "6.feather": 4,
    }
    sets(**inputs)(prompt)
    prompt["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    return prompt


def with_bezier(prompt: dict) -> dict:
    inputs = {"mask": ["3", 0], "seed": 0, "jitter": 5, "box_expansion": 0.4}
    prompt["8"] = {"class_type": "PaintByExample.MaskBezierJitter", "inputs": inputs}
    prompt["6"]["inputs"]["mask"] = ["8", 0]
    return prompt


def with_guidance(prompt: dict) -> dict:
    prompt["9"] = {
        "class_type": "PaintByExample.SimilarityGuidance",
        "inputs": {
            "model": ["1", 0],
            "similarity": 5.0,
            "schedule": "constant",
            "similarity_end": 5.0,
            "sigma_low": 0.0,
            "sigma_high": 1000.0,
            "rescale_phi": 0.0,
        },
    }
    prompt["6"]["inputs"]["model"] = ["9", 0]
    return prompt


def repeat(prompt: dict, node_id: str, source: list, amount: int) -> list:
    """A RepeatImageBatch of ``source`` (an IMAGE link) as node ``node_id``; returns its link."""
    prompt[node_id] = {
        "class_type": "RepeatImageBatch",
        "inputs": {"image": source, "amount": amount},
    }
    return [node_id, 0]


def mask_batch(prompt: dict, amount: int) -> None:
    """The sampler's mask becomes ``amount`` copies of mask.png."""
    prompt["20"] = {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}}
    link = repeat(prompt, "21", ["20", 0], amount)
    prompt["22"] = {"class_type": "ImageToMask", "inputs": {"image": link, "channel": "red"}}
    prompt["6"]["inputs"]["mask"] = ["22", 0]


Edit = Callable[[dict], None]


def sets(**values) -> Edit:
    """Set inputs: ``sets(**{"6.similarity": NAN})``."""

    def edit(prompt: dict) -> None:
        for target, value in values.items():
            node, name = target.split(".")
            prompt[node]["inputs"][name] = value

    return edit


def then(*edits: Edit) -> Edit:
    def edit(prompt: dict) -> None:
        for step in edits:
            step(prompt)

    return edit


def bezier(**values) -> Edit:
    return then(with_bezier, sets(**{f"8.{k}": v for k, v in values.items()}))


def guidance(**values) -> Edit:
    return then(with_guidance, sets(**{f"9.{k}": v for k, v in values.items()}))


def drop(target: str) -> Edit:
    def edit(prompt: dict) -> None:
        node, name = target.split(".")
        del prompt[node]["inputs"][name]

    return edit


def linked(target: str, value: float) -> Edit:
    """``target`` fed by a PrimitiveFloat link holding ``value`` (ComfyUI never range-checks a
    linked value)."""

    def edit(prompt: dict) -> None:
        node, name = target.split(".")
        prompt["27"] = {"class_type": "PrimitiveFloat", "inputs": {"value": value}}
        prompt[node]["inputs"][name] = ["27", 0]

    return edit


def second_loader(model_name: str, output: str) -> Edit:
    """The sampler's ``output`` ("vae" or "model") from a second Loader of ``model_name``."""

    def edit(prompt: dict) -> None:
        prompt["28"] = {
            "class_type": "PaintByExample.Loader",
            "inputs": {"model_name": model_name, "weight_dtype": "fp32"},
        }
        prompt["6"]["inputs"][output] = ["28", {"model": 0, "vae": 1}[output]]

    return edit


def images_batch(count: int) -> Edit:
    def edit(prompt: dict) -> None:
        prompt["6"]["inputs"]["image"] = repeat(prompt, "23", ["2", 0], count)

    return edit


def exemplar_batch(count: int) -> Edit:
    def edit(prompt: dict) -> None:
        prompt["5"]["inputs"]["exemplar"] = repeat(prompt, "24", ["4", 0], count)

    return edit


def exemplar_mask(image: str) -> Edit:
    def edit(prompt: dict) -> None:
        prompt["25"] = {"class_type": "LoadImageMask", "inputs": {"image": image, "channel": "red"}}
        prompt["5"]["inputs"]["exemplar_mask"] = ["25", 0]

    return edit


def crop_and_stitch_into(image: str) -> Edit:
    """Crop For Exemplar Edit of the source and mask, its window stitched straight back, into the
    image ``image`` instead of the cropped one."""

    def edit(prompt: dict) -> None:
        crop = {"image": ["2", 0], "mask": ["3", 0], "context_margin": 0.25, "resolution": 0}
        crop.update(feather=16, mask_grow=0, mask_blur=0)
        prompt["30"] = {"class_type": "PaintByExample.CropForEdit", "inputs": crop}
        prompt["29"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        stitch = {"crop": ["30", 2], "edited": ["30", 0], "image": ["29", 0], "color_match": False}
        prompt["31"] = {"class_type": "PaintByExample.StitchEdit", "inputs": stitch}
        prompt["32"] = {"class_type": "PreviewImage", "inputs": {"images": ["31", 0]}}

    return edit


def large_source(prompt: dict) -> None:
    inputs = {"width": 2048, "height": 2048, "batch_size": 1, "color": 0x808080}
    prompt["26"] = {"class_type": "EmptyImage", "inputs": inputs}
    prompt["6"]["inputs"]["image"] = ["26", 0]
    prompt["3"]["inputs"]["image"] = "large_mask.png"


@dataclass(frozen=True)
class Case:
    name: str
    edit: Edit
    outcome: str  # REFUSED, FAILED or OK
    words: tuple[str, ...] = ()  # all must appear in the message (case-insensitive)
    node: str | None = None  # the node whose error it is; for REFUSED: the marked "node.input"


CASES = [
    # --- Inpaint Sampler: images and masks
    Case(
        "mask of another size",
        sets(**{"3.image": "mask32.png"}),
        FAILED,
        ("mask is 32x32", "image is 64x64", "give a mask of the image's size"),
        "6",
    ),
    Case(
        "3 images, 2 masks",
        then(images_batch(3), lambda p: mask_batch(p, 2)),
        FAILED,
        ("2 masks for 3 image", "one mask for all images or exactly one per image"),
        "6",
    ),
    Case("1 image, 2 masks", lambda p: mask_batch(p, 2), FAILED, ("2 masks for 1 image",), "6"),
    Case(
        "2 images, 3 exemplars",
        then(images_batch(2), exemplar_batch(3)),
        FAILED,
        ("3 positive conditions for 2 image",),
        "6",
    ),
    Case(
        "empty mask",
        sets(**{"3.image": "empty_mask.png"}),
        FAILED,
        ("mask 0 is empty", "paint the area to replace in white"),
        "6",
    ),
    Case(
        "full mask",
        sets(**{"3.image": "full_mask.png"}),
        FAILED,
        ("covers the whole image", "leave part of the image unmasked"),
        "6",
    ),
    Case(
        "1x1 image, 1x1 mask",
        sets(**{"2.image": "pixel.png", "3.image": "pixel_mask.png"}),
        FAILED,
        ("covers the whole image",),
        "6",
    ),
    Case("1 px masked in a 64 px image", sets(**{"3.image": "dot_mask.png"}), OK),
    Case("2048x2048 image, small mask", large_source, OK),
    # --- mask grow and blur (Inpaint Sampler), Crop For Exemplar Edit -> Stitch Exemplar Edit
    Case(
        "mask_grow larger than the image",
        sets(**{"6.mask_grow": 1000}),
        FAILED,
        ("mask_grow 1000 is larger than the 64x64 image", "at most 64"),
        "6",
    ),
    Case(
        "mask_grow shrinks the mask away",
        sets(**{"6.mask_grow": -40}),
        FAILED,
        ("mask_grow -40 removes the whole mask", "24x24 px box", "smaller shrink"),
        "6",
    ),
    Case(
        "negative mask_blur (API prompt)",
        sets(**{"6.mask_blur": -3}),
        REFUSED,
        ("smaller than min of 0", "mask_blur"),
        "6.mask_blur",
    ),
    Case(
        "crop of a 64 px image stitched into a 32 px one",
        crop_and_stitch_into("mask32.png"),
        FAILED,
        ("image is 32x32", "crop was made from a 64x64 image"),
        "31",
    ),
    Case(
        "resolution 4096 (over the max)",
        sets(**{"6.resolution": 4096}),
        REFUSED,
        ("resolution", "bigger than max of 2048"),
        "6.resolution",
    ),
    Case(
        "resolution 20 (not a multiple)",
        sets(**{"6.resolution": 20}),
        FAILED,
        ("resolution 20", "multiple of"),
        "6",
    ),
    # --- Inpaint Sampler: numbers
    Case(
        "similarity NaN (bare JSON)",
        sets(**{"6.similarity": NAN}),
        FAILED,
        ("similarity", "finite number"),
        "6",
    ),
    Case(
        "similarity 'nan'",
        sets(**{"6.similarity": "nan"}),
        FAILED,
        ("similarity", "finite number"),
        "6",
    ),
    Case(
        "similarity 'inf'",
        sets(**{"6.similarity": "inf"}),
        REFUSED,
        ("similarity", "bigger than max"),
        "6.similarity",
    ),
    Case(
        "similarity -1",
        sets(**{"6.similarity": -1}),
        REFUSED,
        ("similarity", "smaller than min"),
        "6.similarity",
    ),
    Case(
        "similarity 1e308",
        sets(**{"6.similarity": 1e308}),
        REFUSED,
        ("similarity", "bigger than max"),
        "6.similarity",
    ),
    Case(
        "similarity NaN through a link",
        linked("6.similarity", NAN),
        FAILED,
        ("similarity", "finite number"),
        "6",
    ),
    Case(
        "similarity 80 through a link",
        linked("6.similarity", 80.0),
        FAILED,
        ("similarity must be a finite number between 0 and 50, got 80",),
        "6",
    ),
    Case("denoise 'nan'", sets(**{"6.denoise": "nan"}), FAILED, ("denoise", "finite number"), "6"),
    Case(
        "denoise 0", sets(**{"6.denoise": 0}), REFUSED, ("denoise", "smaller than min"), "6.denoise"
    ),
    Case(
        "context_margin 'nan'",
        sets(**{"6.context_margin": "nan"}),
        FAILED,
        ("context_margin", "finite number"),
        "6",
    ),
    Case(
        "context_margin -inf",
        sets(**{"6.context_margin": "-inf"}),
        REFUSED,
        ("context_margin", "smaller than min"),
        "6.context_margin",
    ),
    Case("steps 'nan'", sets(**{"6.steps": "nan"}), REFUSED, ("steps", "INT"), "6.steps"),
    Case("steps 0", sets(**{"6.steps": 0}), REFUSED, ("steps", "smaller than min"), "6.steps"),
    Case(
        "feather -1",
        sets(**{"6.feather": -1}),
        REFUSED,
        ("feather", "smaller than min"),
        "6.feather",
    ),
    Case("seed 2^64-1 (the declared max)", sets(**{"6.seed": SEED_MAX}), OK),
    Case("seed 2^64-1, 2 images", then(images_batch(2), sets(**{"6.seed": SEED_MAX})), OK),
    Case(
        "seed 2^64",
        sets(**{"6.seed": SEED_MAX + 1}),
        REFUSED,
        ("seed", "bigger than max"),
        "6.seed",
    ),
    Case("seed -1", sets(**{"6.seed": -1}), REFUSED, ("seed", "smaller than min"), "6.seed"),
    Case(
        "unknown sampler_name",
        sets(**{"6.sampler_name": "plms"}),
        FAILED,
        ("sampler_name 'plms' is not one of", "ddim"),
        "6",
    ),
    # --- Exemplar Encode
    Case("exemplar 12 px", sets(**{"4.image": "exemplar12.png"}), FAILED, ("at least 16 px",), "5"),
    Case("exemplar 1x1", sets(**{"4.image": "pixel.png"}), FAILED, ("at least 16 px",), "5"),
    Case(
        "background_fill NaN",
        sets(**{"5.background_fill": NAN}),
        FAILED,
        ("background_fill", "finite number"),
        "5",
    ),
    Case(
        "empty exemplar_mask", exemplar_mask("empty_mask40.png"), FAILED, ("exemplar", "empty"), "5"
    ),
    Case(
        "exemplar_mask of another size",
        exemplar_mask("mask32.png"),
        FAILED,
        ("32x32", "40x40"),
        "5",
    ),
    Case(
        "unknown combine",
        sets(**{"5.combine": "sum"}),
        FAILED,
        ("combine 'sum' is not one of", "mean"),
        "5",
    ),
    # --- Mask Bezier Jitter
    Case(
        "Bezier: empty mask",
        then(bezier(), sets(**{"3.image": "empty_mask.png"})),
        FAILED,
        ("mask 0 is empty", "mark the area to edit in white"),
        "8",
    ),
    Case(
        "Bezier: box_expansion NaN",
        bezier(box_expansion=NAN),
        FAILED,
        ("box_expansion", "finite number"),
        "8",
    ),
    Case(
        "Bezier: jitter -1", bezier(jitter=-1), REFUSED, ("jitter", "smaller than min"), "8.jitter"
    ),
    Case(
        "Bezier: seed 2^64-1, 2 masks",
        then(
            bezier(seed=SEED_MAX),
            lambda p: mask_batch(p, 2),
            lambda p: p["8"]["inputs"].update(mask=["22", 0]),
            sets(**{"6.mask": ["8", 0]}),
            images_batch(2),
        ),
        OK,
    ),
    # --- Similarity Guidance
    Case(
        "Guidance: similarity NaN",
        guidance(similarity=NAN),
        FAILED,
        ("similarity", "finite number"),
        "9",
    ),
    Case(
        "Guidance: similarity_end NaN (linear)",
        guidance(schedule="linear", similarity_end=NAN),
        FAILED,
        ("similarity_end", "finite number"),
        "9",
    ),
    Case(
        "Guidance: sigma_low NaN",
        guidance(sigma_low=NAN),
        FAILED,
        ("sigma_low", "finite number"),
        "9",
    ),
    Case(
        "Guidance: sigma_high NaN",
        guidance(sigma_high=NAN),
        FAILED,
        ("sigma_high", "finite number"),
        "9",
    ),
    Case(
        "Guidance: rescale_phi NaN",
        guidance(rescale_phi=NAN),
        FAILED,
        ("rescale_phi", "finite number"),
        "9",
    ),
    Case(
        "Guidance: sigma_low > sigma_high",
        guidance(sigma_low=5.0, sigma_high=1.0),
        FAILED,
        ("sigma_low", "sigma_high"),
        "9",
    ),
    Case(
        "Guidance: unknown schedule",
        guidance(schedule="cosine"),
        FAILED,
        ("schedule 'cosine' is not one of", "linear"),
        "9",
    ),
    # --- Loader and model files
    Case(
        "missing model name",
        sets(**{"1.model_name": "missing.safetensors"}),
        REFUSED,
        ("missing.safetensors", "was not found", "paint_by_example"),
        "1.model_name",
    ),
    Case(
        "path traversal",
        sets(**{"1.model_name": "../../input/source.png"}),
        REFUSED,
        ("points outside",),
        "1.model_name",
    ),
    Case(
        "absolute path",
        sets(**{"1.model_name": "/etc/hostname"}),
        REFUSED,
        ("points outside",),
        "1.model_name",
    ),
    Case(
        "text file named .safetensors",
        sets(**{"1.model_name": "notes.safetensors"}),
        FAILED,
        ("notes.safetensors", "not a readable .safetensors file"),
        "1",
    ),
    Case(
        "empty file",
        sets(**{"1.model_name": "empty.safetensors"}),
        FAILED,
        ("empty.safetensors", "not a readable .safetensors file"),
        "1",
    ),
    Case(
        "truncated file",
        sets(**{"1.model_name": "truncated.safetensors"}),
        FAILED,
        ("truncated.safetensors", "truncated or corrupt"),
        "1",
    ),
    Case(
        "safetensors header claiming 1 PB",
        sets(**{"1.model_name": "huge-header.safetensors"}),
        FAILED,
        ("huge-header.safetensors",),
        "1",
    ),
    Case(
        "pickle that would run code",
        sets(**{"1.model_name": "evil.ckpt"}),
        FAILED,
        ("evil.ckpt", "would run code", ".safetensors"),
        "1",
    ),
    Case(
        "NaN weights in the exemplar encoder",
        sets(**{"1.model_name": "nan-encoder.safetensors"}),
        FAILED,
        ("nan-encoder.safetensors", "exemplar encoder", "NaN"),
        "5",
    ),
    Case(
        "NaN weights in the UNet",
        sets(**{"1.model_name": "nan-unet.safetensors"}),
        FAILED,
        ("nan-unet.safetensors", "UNet", "NaN"),
        "6",
    ),
    Case(
        "NaN weights in the VAE decoder",
        sets(**{"1.model_name": "nan-vae.safetensors"}),
        FAILED,
        ("nan-vae.safetensors", "VAE", "NaN"),
        "6",
    ),
    Case(
        "VAE of a NaN file, model of a good one",
        second_loader("nan-vae.safetensors", "vae"),
        FAILED,
        ("VAE decoder of", "nan-vae.safetensors", "NaN"),
        "6",
    ),
    Case(
        "unknown weight_dtype",
        sets(**{"1.weight_dtype": "fp8"}),
        FAILED,
        ("weight_dtype 'fp8' is not one of", "fp32"),
        "1",
    ),
    # --- Links
    Case(
        "IMAGE linked into mask",
        sets(**{"6.mask": ["2", 0]}),
        REFUSED,
        ("mask", "IMAGE", "MASK"),
        "6.mask",
    ),
    Case(
        "VAE linked into model",
        sets(**{"6.model": ["1", 1]}),
        REFUSED,
        ("model", "VAE", "MODEL"),
        "6.model",
    ),
    Case(
        "MASK linked into exemplar",
        sets(**{"5.exemplar": ["3", 0]}),
        REFUSED,
        ("exemplar", "MASK", "IMAGE"),
        "5.exemplar",
    ),
    Case(
        "missing mask link",
        drop("6.mask"),
        REFUSED,
        ("required input is missing", "mask"),
        "6.mask",
    ),
]


# ------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------


def post_prompt(server: pbe_host.Server, prompt: dict) -> tuple[int, dict]:
    body = json.dumps({"prompt": prompt, "client_id": "bad-inputs"}).encode()  # NaN stays bare
    request = urllib.request.Request(
        server.url + "/prompt", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def rejection_text(answer: dict) -> str:
    error = answer.get("error", {})
    parts = [str(error.get("message", "")), str(error.get("details", ""))]
    for info in (answer.get("node_errors") or {}).values():
        for item in info.get("errors", []):
            parts += [str(item.get("message", "")), str(item.get("details", ""))]
    return " | ".join(parts)


def execution_error(entry: dict) -> dict | None:
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return data
    return None


def flagged_inputs(answer: dict) -> str:
    """The inputs a 400 answer marks as wrong, as "node.input" (what the frontend outlines)."""
    found = {
        f"{node_id}.{item.get('extra_info', {}).get('input_name')}"
        for node_id, info in (answer.get("node_errors") or {}).items()
        for item in info.get("errors", [])
    }
    return ", ".join(sorted(found))


def run_prompt(server: pbe_host.Server, prompt: dict) -> tuple[str, str, str | None]:
    """(outcome, message, where) of one prompt: where is the failing node's id, or for a 400
    answer the inputs it marks."""
    status, answer = post_prompt(server, prompt)
    if status == 400:
        return REFUSED, rejection_text(answer), flagged_inputs(answer)
    assert status == 200, (status, answer)
    entry = wait_history(Client(server.url), answer["prompt_id"], 120.0, quiet=True)
    error = execution_error(entry)
    if error is not None:
        message = f"{error.get('exception_type')}: {error.get('exception_message')}"
        return FAILED, message, str(error.get("node_id"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    return OK, "", None


def snapshot(folders: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``folders`` (the user's input and model folders)."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


_GOOD_SEED = iter(range(1000, 10**6))


@pytest.fixture(scope="module")
def user_files(install) -> dict[str, str]:
    outcome, message, _ = run_prompt(install.server, good_prompt(next(_GOOD_SEED)))
    assert outcome == OK, message
    return snapshot(install.watched)


def test_the_table_is_large_enough_and_names_are_unique():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_clearly_and_the_server_keeps_working(install, user_files, case):
    prompt = good_prompt(seed=7)
    case.edit(prompt)
    outcome, message, node = run_prompt(install.server, prompt)
    assert outcome == case.outcome, f"{case.name}: got {outcome}, not {case.outcome}: {message}"
    for word in case.words:
        assert word.lower() in message.lower(), f"{case.name}: {word!r} not in {message!r}"
    if case.outcome != OK:
        assert node == case.node, f"{case.name}: the error is on {node}, not {case.node}: {message}"
    if outcome == FAILED:  # a message of ours, not a crash inside torch or ComfyUI
        assert "PaintByExampleInputError" in message or "CheckpointError" in message, message
    assert install.server.process.poll() is None, "the server died"
    outcome, message, _ = run_prompt(install.server, good_prompt(next(_GOOD_SEED)))
    assert outcome == OK, f"the good prompt after {case.name!r} failed: {message}"
    assert snapshot(install.watched) == user_files, f"{case.name} changed a user's file"
    assert not install.marker.exists(), "the pickle in evil.ckpt ran code"
