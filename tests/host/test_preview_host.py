"""The Inpaint Sampler's ``preview`` output: in-process on the tiny model, then on the user's
install over HTTP (a prompt whose preview goes to SaveImage; old prompts without it unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pbe_host
import pytest
import torch
from PIL import Image

REPO = pbe_host.REPO_ROOT
SIZE = 64
SAMPLER = "PaintByExample.InpaintSampler"


def _image(seed: int, batch: int = 1, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


def _views(batch: int, side: int = 32) -> torch.Tensor:
    """Exemplar views [B, S, S, 3], each image a different flat colour plus noise."""
    noise = torch.rand(batch, side, side, 3, generator=torch.Generator().manual_seed(5))
    return (noise * 0.5 + torch.linspace(0, 0.5, batch).view(batch, 1, 1, 1)).clamp(0, 1)


def _with_views(host, conditioning: list, views: object) -> list:
    key = host.module("nodes.types").EXEMPLAR_VIEW_KEY
    return [[tensor, {**extras, key: views}] for tensor, extras in conditioning]


def _run(host, loaded, positive, negative, image, mask) -> tuple:
    model, vae, _ = loaded
    return host.run(
        SAMPLER,
        model=model,
        vae=vae,
        positive=positive,
        negative=negative,
        image=image,
        mask=mask,
        seed=1,
        steps=1,
        resolution=SIZE,
        feather=4,
    )


def _expected(host, loaded, image, mask, view) -> torch.Tensor:
    """The preview of one image [1, H, W, 3], from the core's window and the given view."""
    crop = host.module("exemplar_core.crop")
    preview = host.module("exemplar_core.preview")
    model, vae, _ = loaded
    multiple = host.module("nodes.model_builder").size_multiple(model, vae)
    window = crop.prepare_window(
        image.permute(0, 3, 1, 2), (mask[:, None] > 0.5).float(), 0.25, SIZE, 4, multiple
    )
    return preview.window_preview(window.image, window.edit_mask, view).permute(0, 2, 3, 1)


def test_preview_shows_each_images_window_and_its_own_exemplar_view(host, loaded):
    _, _, encoder = loaded
    positive, negative, *_ = host.run(
        "PaintByExample.ExemplarEncode", encoder=encoder, exemplar=_image(7, batch=2, width=40)
    )
    views = _views(2)
    positive = _with_views(host, positive, views)
    images = _image(3, batch=2, height=96)
    masks = torch.zeros(2, 96, SIZE)
    masks[0, 20:36, 20:36] = 1  # a small square: a 64 x 64 window
    masks[1, 40:50, 4:60] = 1  # wide: a window as wide as the image, taller, so narrower at 64
    edited, _, previews = _run(host, loaded, positive, negative, images, masks)
    assert edited.shape == images.shape
    expected = [
        _expected(host, loaded, images[i : i + 1], masks[i : i + 1], views[i].permute(2, 0, 1))
        for i in range(2)
    ]
    assert expected[0].shape != expected[1].shape  # so the padding is exercised
    height = max(e.shape[1] for e in expected)
    width = max(e.shape[2] for e in expected)
    assert previews.shape == (2, height, width, 3)
    background = host.module("exemplar_core.preview").BACKGROUND
    for preview, want in zip(previews, expected, strict=True):
        h, w = want.shape[1:3]
        assert torch.equal(preview[:h, :w], want[0])  # at the top left, unscaled
        assert (preview[h:] == background).all() and (preview[:, w:] == background).all()


def test_one_condition_of_combined_exemplars_shows_all_their_views(host, loaded):
    _, _, encoder = loaded
    positive, negative, *_ = host.run(
        "PaintByExample.ExemplarEncode",
        encoder=encoder,
        exemplar=_image(7, batch=2, width=40),
        combine="mean",
    )
    views = _views(2)
    image, mask = _image(4), torch.zeros(1, SIZE, SIZE)
    mask[:, 20:40, 24:44] = 1
    *_, preview = _run(host, loaded, _with_views(host, positive, views), negative, image, mask)
    side_by_side = torch.cat([views[0], views[1]], dim=1).permute(2, 0, 1)
    assert torch.equal(preview, _expected(host, loaded, image, mask, side_by_side))


def test_without_a_usable_exemplar_view_the_preview_is_the_window_only(host, loaded, caplog):
    _, _, encoder = loaded
    positive, negative, *_ = host.run(
        "PaintByExample.ExemplarEncode", encoder=encoder, exemplar=_image(7, width=40)
    )
    plain = [[tensor, dict(extras)] for tensor, extras in positive]
    key = host.module("nodes.types").EXEMPLAR_VIEW_KEY
    for _, extras in plain:
        extras.pop(key, None)  # a condition from elsewhere (the Exemplar Mapper's)
    image, mask = _image(4), torch.zeros(1, SIZE, SIZE)
    mask[:, 20:40, 24:44] = 1
    window_only = _expected(host, loaded, image, mask, None)
    *_, preview = _run(host, loaded, plain, negative, image, mask)
    assert torch.equal(preview, window_only)
    broken = _with_views(host, plain, torch.rand(1, 3, 32, 32))  # BCHW, not an IMAGE
    edited, _, preview = _run(host, loaded, broken, negative, image, mask)
    assert torch.equal(preview, window_only) and "shows the window only" in caplog.text
    assert torch.equal(edited, _run(host, loaded, plain, negative, image, mask)[0])


# ------------------------------------------------------------------------------------------
# The user's install, over HTTP
# ------------------------------------------------------------------------------------------


def _prompt(with_preview: bool) -> dict:
    """The basic template's API twin at 2 steps; with_preview: the sampler's preview (output 2)
    goes to a SaveImage titled "preview"."""
    prompt = json.loads((REPO / "workflows/api/basic_exemplar_edit.json").read_text())
    sampler = next(k for k, node in prompt.items() if node["class_type"] == SAMPLER)
    prompt[sampler]["inputs"]["steps"] = 2
    if with_preview:
        prompt["preview"] = {
            "class_type": "SaveImage",
            "inputs": {"images": [sampler, 2], "filename_prefix": "pbe_preview"},
            "_meta": {"title": "preview"},
        }
    return prompt


def _run_over_http(server, prompt: dict, folder: Path) -> dict[str, Path]:
    from exemplar_core.headless import RunOptions, run_outputs

    folder.mkdir()
    workflow = folder / "prompt.json"
    workflow.write_text(json.dumps(prompt))
    options = RunOptions(
        workflow=workflow, server=server.url, out=folder / "out", timeout=600, quiet=True
    )
    return {item.title: item.path for item in run_outputs(options)}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def preview_run(user_install, tmp_path_factory) -> dict[str, Path]:
    return _run_over_http(user_install, _prompt(True), tmp_path_factory.mktemp("preview") / "a")


@pytest.fixture(scope="module")
def in_process_window():
    """What the user's install should show as the window: the template's inputs through the
    core's window (the embedded model's native size and size multiple) and the preview's outline,
    [H, W, 3] 0..255; and the layout for the embedded model's exemplar view."""
    from exemplar_core import crop, preview
    from exemplar_core.checkpoint import load_model
    from exemplar_core.image_io import load_mask, load_rgb, to_uint8

    configs = load_model(REPO / "models" / "pbe-mini.safetensors").configs
    source = load_rgb(REPO / "example_inputs" / "source.png")
    edit_mask = (load_mask(REPO / "example_inputs" / "mask.png") >= 0.5).float()
    window = crop.prepare_window(
        source, edit_mask, 0.25, configs.native_size, 16, configs.size_multiple
    )
    outlined = to_uint8(preview.window_preview(window.image, window.edit_mask)).astype(int)
    side = configs.encoder.image_size
    layout = preview.preview_layout(tuple(window.image.shape[-2:]), (side, side))
    return outlined, layout


def test_a_prompt_saving_the_sampler_preview_shows_the_processing_window(
    preview_run, in_process_window
):
    outlined, layout = in_process_window
    saved = _pixels(preview_run["preview"])
    h, w = outlined.shape[:2]
    assert saved.shape[0] >= h and saved.shape[1] >= w
    assert np.abs(saved[:h, :w] - outlined).max() <= 1  # 8-bit rounding at most
    from exemplar_core.preview import OUTLINE_INNER

    magenta = (saved[:h, :w] == np.array(OUTLINE_INNER) * 255).all(-1)
    assert magenta.sum() > 20  # the mask's outline is there


def test_the_saved_preview_shows_the_exemplar_as_the_encoder_saw_it(preview_run, in_process_window):
    from exemplar_core.checkpoint import load_model
    from exemplar_core.image_io import load_rgb, to_uint8
    from exemplar_core.preprocess import frame_exemplar

    _, layout = in_process_window
    config = load_model(REPO / "models" / "pbe-mini.safetensors").configs.encoder
    exemplar = load_rgb(REPO / "example_inputs" / "exemplar.png")
    view = frame_exemplar(exemplar, config)
    k, v = layout.view_scale, layout.view
    shown = to_uint8(view.repeat_interleave(k, -2).repeat_interleave(k, -1)).astype(int)
    saved = _pixels(preview_run["preview"])
    assert saved.shape[:2] == (layout.height, layout.width)
    assert np.abs(saved[v.y0 : v.y1, v.x0 : v.x1] - shown).max() <= 1


def test_an_old_prompt_without_the_preview_runs_and_edits_as_with_it(
    user_install, preview_run, tmp_path
):
    old = _run_over_http(user_install, _prompt(False), tmp_path / "old")
    assert sorted(old) == ["save"]
    assert np.array_equal(_pixels(old["save"]), _pixels(preview_run["save"]))
