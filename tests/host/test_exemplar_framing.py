"""Cut-out exemplars and exemplar framing on the user's path.

Over HTTP on the user's install (the pack copied into ``custom_nodes/``, its example inputs put in
place at start-up): LoadImage of the bundled cut-out gives its alpha as MASK, Exemplar Encode
takes it with ``exemplar_mask_marks`` "background" and frames the object ``pad_to_square``; the
pack's sampler and the stock InpaintModelConditioning + KSampler run with the conditioning that
carries the exemplar view (for several exemplars combined too). Exemplar Encode's
``exemplar_view`` is the editor's framing of the same PNG. Bad values are refused with their
names and the server keeps serving.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import urllib.parse

import numpy as np
import pbe_host
import pytest
import torch
from PIL import Image
from test_bad_inputs import post_prompt, rejection_text

from exemplar_core.headless import Client, wait_history

REPO = pbe_host.REPO_ROOT
CUTOUT_FILE = REPO / "example_inputs" / "exemplar_cutout.png"
CUTOUT = "pbe_example_exemplar_cutout.png"  # as the pack installs it into ComfyUI's input folder
BASIC = REPO / "workflows" / "api" / "basic_exemplar_edit.json"
STOCK = REPO / "workflows" / "api" / "stock_ksampler_edit.json"
ENCODE = "PaintByExample.ExemplarEncode"
VIEW = "30"  # the PreviewImage of Exemplar Encode's exemplar_view
EXPAND = 1.2


def _editors_view(config, mode: str = "pad_to_square", expand: float = EXPAND) -> torch.Tensor:
    """The editor's framing of the cut-out file: [1, S, S, 3] 0..1."""
    from exemplar_core.image_io import load_exemplar
    from exemplar_core.preprocess import frame_exemplar

    exemplar = load_exemplar(CUTOUT_FILE)
    assert exemplar.shape[1] == 4  # its alpha is the exemplar mask
    return frame_exemplar(exemplar, config, mode=mode, expand=expand).permute(0, 2, 3, 1)


def cutout_prompt(template, combine: str = "one per exemplar", exemplars: int = 1) -> dict:
    """``template``'s API twin with the cut-out as the exemplar (LoadImage's MASK as a background
    mask, framed pad_to_square), 1 step, the result and the exemplar view previewed."""
    prompt = json.loads(template.read_text())
    prompt["4"]["inputs"]["image"] = CUTOUT
    encode = prompt["5"]["inputs"]
    encode.update(
        exemplar_mask=["4", 1],
        exemplar_mask_marks="background",
        resize="pad_to_square",
        object_expand=EXPAND,
        combine=combine,
    )
    if exemplars > 1:
        inputs = {"image": ["4", 0], "amount": exemplars}
        prompt["24"] = {"class_type": "RepeatImageBatch", "inputs": inputs}
        encode["exemplar"] = ["24", 0]
    for node in prompt.values():
        if node["class_type"] in ("PaintByExample.InpaintSampler", "KSampler"):
            node["inputs"]["steps"] = 1
        if node["class_type"] == "SaveImage":
            node["class_type"] = "PreviewImage"
            del node["inputs"]["filename_prefix"]
    prompt[VIEW] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 2]}}
    return prompt


def _run(server, prompt: dict) -> dict:
    client = Client(server.url, timeout=60)
    return wait_history(client, client.queue(prompt), timeout=600, quiet=True)


def _error(entry: dict) -> str:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return f"{data['node_type']}: {data['exception_message']}"
    return ""


def _image(server, entry: dict, node: str) -> np.ndarray:
    info = entry["outputs"][node]["images"][0]
    query = urllib.parse.urlencode({k: info[k] for k in ("filename", "subfolder", "type")})
    status, _, body = server.get_bytes(f"/view?{query}")
    assert status == 200
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def test_a_cutout_through_loadimage_frames_its_object_and_the_packs_sampler_runs(user_install):
    from exemplar_core.checkpoint import load_checkpoint
    from exemplar_core.image_io import to_uint8

    entry = _run(user_install, cutout_prompt(BASIC))
    assert entry["status"]["status_str"] == "success", _error(entry)
    view = _image(user_install, entry, VIEW)
    config = load_checkpoint(REPO / "models" / "pbe-mini.safetensors", lazy=True).configs.encoder
    expected = to_uint8(_editors_view(config).permute(0, 3, 1, 2))
    assert view.shape == expected.shape == (config.image_size, config.image_size, 3)
    assert np.abs(view.astype(int) - expected.astype(int)).max() <= 1
    # the background is the white fill, not the cut-out's black: the alpha was used
    assert view[0, 0].min() >= 250 and view[-1, -1].min() >= 250


@pytest.mark.parametrize("combine", ["mean", "concat tokens"])
@pytest.mark.parametrize("template", [BASIC, STOCK], ids=["pack sampler", "stock KSampler"])
def test_the_exemplar_view_in_the_conditioning_passes_both_samplers(
    user_install, template, combine
):
    entry = _run(user_install, cutout_prompt(template, combine, exemplars=2))
    assert entry["status"]["status_str"] == "success", _error(entry)
    assert len(entry["outputs"][VIEW]["images"]) == 2  # one view per exemplar


@pytest.mark.parametrize(
    "change, words",
    [
        ({"object_expand": 5.0}, ("object_expand", "bigger than max")),
        ({"object_expand": 0.5}, ("object_expand", "smaller than min")),
    ],
)
def test_bad_framing_values_are_refused_by_name_and_the_server_stays_up(
    user_install, change, words
):
    prompt = cutout_prompt(BASIC)
    prompt["5"]["inputs"].update(change)
    status, answer = post_prompt(user_install, prompt)
    message = rejection_text(answer)
    assert status == 400 and all(word in message for word in words), message
    assert _run(user_install, cutout_prompt(BASIC))["status"]["status_str"] == "success"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"object_expand": "nan"}, ("object_expand must be a finite number between 1 and 4",)),
        ({"resize": "pad"}, ("resize 'pad' is not one of", "pad_to_square")),
        (
            {"exemplar_mask": ["31", 0]},  # a 40x40 mask for the 128x96 cut-out
            ("exemplar mask is 40x40 but the exemplar is 128x96", "give a mask of the same size"),
        ),
    ],
)
def test_bad_framing_inputs_fail_the_node_with_a_message_and_the_server_stays_up(
    user_install, change, words
):
    prompt = cutout_prompt(BASIC)
    prompt["31"] = {
        "class_type": "SolidMask",
        "inputs": {"value": 1.0, "width": 40, "height": 40},
    }
    prompt["5"]["inputs"].update(change)
    entry = _run(user_install, prompt)
    assert entry["status"]["status_str"] == "error"
    message = _error(entry)
    assert message.startswith(ENCODE) and all(word in message for word in words), message
    assert _run(user_install, cutout_prompt(BASIC))["status"]["status_str"] == "success"


# ------------------------------------------------------------------------------------------
# In-process: the node's tensors against the editor's
# ------------------------------------------------------------------------------------------


@pytest.fixture()
def cutout_loaded(host, tmp_path):
    """(IMAGE, MASK) of the cut-out from ComfyUI's own LoadImage."""
    import folder_paths

    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    shutil.copy(CUTOUT_FILE, tmp_path / "cutout.png")
    try:
        return host.nodes.NODE_CLASS_MAPPINGS["LoadImage"]().load_image("cutout.png")
    finally:
        folder_paths.set_input_directory(previous)


@pytest.mark.parametrize(
    "resize, expand", [("pad_to_square", EXPAND), ("squash", 1.0), ("center_crop", 2.0)]
)
def test_the_nodes_exemplar_view_is_the_editors_framing_of_the_same_png(
    host, loaded, cutout_loaded, resize, expand
):
    from exemplar_core.image_io import load_exemplar
    from exemplar_core.preprocess import preprocess_exemplar

    _, _, encoder = loaded
    image, mask = cutout_loaded
    key = host.module("nodes.types").EXEMPLAR_VIEW_KEY
    positive, _, view = host.run(
        ENCODE,
        encoder=encoder,
        exemplar=image,
        exemplar_mask=mask,
        exemplar_mask_marks="background",
        resize=resize,
        object_expand=expand,
    )
    expected = _editors_view(encoder.config, resize, expand)
    assert view.shape == expected.shape
    # LoadImage's MASK is 1 - alpha; turned back it differs from the file's alpha by rounding
    assert torch.allclose(view, expected, atol=1e-5)
    assert torch.equal(positive[0][1][key], view)
    # the encoder's input is that view, normalised: the condition is the editor's
    cutout = load_exemplar(CUTOUT_FILE)
    pixels = preprocess_exemplar(cutout, encoder.config, None, resize, 1.0, expand)
    with torch.inference_mode():
        reference = encoder.encoder(pixels)
    assert torch.allclose(positive[0][0], reference, atol=1e-4)


def test_a_four_channel_image_uses_its_alpha_and_a_connected_mask_wins(host, loaded, cutout_loaded):
    _, _, encoder = loaded
    image, mask = cutout_loaded
    rgba = torch.cat([image, 1.0 - mask[..., None]], dim=-1)
    _, _, view = host.run(
        ENCODE, encoder=encoder, exemplar=rgba, resize="pad_to_square", object_expand=EXPAND
    )
    assert torch.allclose(view, _editors_view(encoder.config), atol=1e-5)
    whole = torch.ones(1, *image.shape[1:3])  # an explicit all-object mask: the whole image
    _, _, view = host.run(ENCODE, encoder=encoder, exemplar=rgba, exemplar_mask=whole)
    _, _, plain = host.run(ENCODE, encoder=encoder, exemplar=image)
    assert torch.equal(view, plain)
    assert plain[0, 0, 0].max() < 0.05  # without the alpha the model sees the cut-out's black


def test_an_inverted_mask_is_warned_about_and_an_opaque_images_mask_marks_nothing(
    host, loaded, cutout_loaded, caplog
):
    _, _, encoder = loaded
    image, mask = cutout_loaded
    with caplog.at_level(logging.WARNING):
        host.run(ENCODE, encoder=encoder, exemplar=image, exemplar_mask=mask)  # marks "object"
    assert "exemplar_mask_marks to 'background'" in caplog.text
    no_alpha = torch.zeros(1, 64, 64)  # LoadImage's MASK of an image without transparency
    _, _, view = host.run(
        ENCODE,
        encoder=encoder,
        exemplar=image,
        exemplar_mask=no_alpha,
        exemplar_mask_marks="background",
    )
    _, _, plain = host.run(ENCODE, encoder=encoder, exemplar=image)
    assert torch.equal(view, plain)
    errors = host.module("nodes.checks")
    with pytest.raises(errors.PaintByExampleInputError, match="choose 'background'"):
        host.run(ENCODE, encoder=encoder, exemplar=image, exemplar_mask=no_alpha)
