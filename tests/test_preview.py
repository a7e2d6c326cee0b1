"""The edit preview: the window with its edit mask outlined, the exemplar as encoded beside it."""

from __future__ import annotations

import pytest
import torch

from exemplar_core.preview import (
    BACKGROUND,
    FRAME,
    OUTLINE_INNER,
    OUTLINE_OUTER,
    VIEW_FRAME,
    mask_contours,
    preview_layout,
    window_preview,
)


def _window(h: int = 64, w: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    edit_mask = torch.zeros(1, 1, h, w)
    edit_mask[..., 20:40, 10:30] = 1
    return image, edit_mask


def _is_colour(pixels: torch.Tensor, rgb: tuple[float, float, float]) -> torch.Tensor:
    """pixels [1, 3, h, w] -> [h, w] bool: exactly ``rgb``."""
    return (pixels[0] == torch.tensor(rgb).view(3, 1, 1)).all(0)


def test_outline_lies_on_the_mask_boundary_and_nowhere_else():
    image, edit_mask = _window()
    preview = window_preview(image, edit_mask)
    assert preview.shape == image.shape
    inner = torch.zeros(64, 48, dtype=torch.bool)
    inner[20:40, 10:30] = True
    inner[21:39, 11:29] = False  # the mask's one-pixel rim
    outer = torch.zeros(64, 48, dtype=torch.bool)
    outer[19:41, 9:31] = True
    outer[20:40, 10:30] = False  # the ring just outside the mask
    assert torch.equal(_is_colour(preview, OUTLINE_INNER), inner)
    assert torch.equal(_is_colour(preview, OUTLINE_OUTER), outer)
    away = ~(inner | outer)
    inside = torch.zeros_like(away)
    inside[21:39, 11:29] = True
    # Off the outline the picture is the window: untouched outside the mask, lightly tinted in it.
    assert torch.equal(preview[..., away & ~inside], image[..., away & ~inside])
    tinted = (preview - image)[..., inside].abs()
    assert tinted.max() < 0.2 and tinted.mean() > 0.01


def test_a_mask_reaching_the_window_border_is_not_outlined_along_the_border():
    edit_mask = torch.zeros(1, 1, 16, 16)
    edit_mask[..., :, :8] = 1  # the left half, running on beyond the window
    inner, outer = mask_contours(edit_mask)
    assert inner[0, 0].nonzero()[:, 1].unique().tolist() == [7]
    assert outer[0, 0].nonzero()[:, 1].unique().tolist() == [8]


def test_exemplar_view_is_placed_beside_the_window_upscaled_by_whole_pixels():
    image, edit_mask = _window(64, 48)
    view = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    preview = window_preview(image, edit_mask, view)
    layout = preview_layout((64, 48), (32, 32))
    assert layout.view_scale == 2
    assert preview.shape == (1, 3, layout.height, layout.width)
    assert layout.height == 32 * 2 + 2 * FRAME and layout.view.x0 > 48
    w, v = layout.window, layout.view
    assert torch.equal(preview[..., w.y0 : w.y1, w.x0 : w.x1], window_preview(image, edit_mask))
    shown = preview[0, :, v.y0 : v.y1, v.x0 : v.x1]
    assert torch.equal(shown[:, ::2, ::2], view) and torch.equal(shown[:, 1::2, 1::2], view)
    frame = preview[..., v.y0 - FRAME : v.y0, v.x0 : v.x1]
    assert _is_colour(frame, VIEW_FRAME).all()
    below = preview[..., w.y1 :, : w.x1]  # the window is 64 high, the framed view 68
    assert (below == BACKGROUND).all()


def test_the_published_models_view_is_doubled_beside_a_512_window_and_centred():
    layout = preview_layout((512, 384), (224, 224))
    assert layout.view_scale == 2 and layout.height == 512
    assert layout.view.y1 - layout.view.y0 == 448
    top, bottom = layout.view.y0, layout.height - layout.view.y1
    assert abs(top - bottom) <= 1


def test_a_small_window_keeps_the_view_at_its_own_size():
    layout = preview_layout((64, 64), (224, 224))
    assert layout.view_scale == 1 and layout.height == 224 + 2 * FRAME


def test_without_an_exemplar_view_the_preview_is_the_outlined_window_only():
    image, edit_mask = _window()
    preview = window_preview(image, edit_mask, None)
    assert preview.shape == image.shape
    assert preview_layout((64, 48)).view is None


def test_the_preview_is_deterministic_and_leaves_its_inputs_alone():
    image, edit_mask = _window()
    view = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    copies = image.clone(), edit_mask.clone(), view.clone()
    first = window_preview(image, edit_mask, view)
    assert torch.equal(first, window_preview(image, edit_mask, view))
    assert all(torch.equal(a, b) for a, b in zip((image, edit_mask, view), copies, strict=True))
    assert 0 <= first.min() and first.max() <= 1


def test_shapes_that_do_not_fit_are_refused_with_what_was_expected():
    image, edit_mask = _window()
    with pytest.raises(ValueError, match=r"edit_mask must be \[1, 1, h, w\]"):
        window_preview(image, edit_mask[..., :10])
    with pytest.raises(ValueError, match=r"exemplar_view must be \[3, S, S\]"):
        window_preview(image, edit_mask, torch.rand(32, 32, 3))


# ------------------------------------------------------------------ the editor and --preview


def _edit_inputs(h: int = 96, w: int = 128):
    g = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, h, w, generator=g)
    edit_mask = torch.zeros(1, 1, h, w)
    edit_mask[..., 30:60, 40:90] = 1
    return source, edit_mask, torch.rand(1, 3, 40, 40, generator=g)


def test_the_editor_gives_the_preview_of_the_window_it_processed_and_the_encoders_view(
    tiny_model,
):
    from exemplar_core import crop
    from exemplar_core.editor import Editor, EditSettings
    from exemplar_core.preprocess import frame_exemplar

    editor = Editor(tiny_model, device="cpu", progress=False)
    source, edit_mask, exemplar = _edit_inputs()
    settings = EditSettings(steps=1, size=64, feather=4, scheduler="ddim")
    result = editor.edit(source, edit_mask, exemplar, settings)
    window = crop.prepare_window(source, edit_mask, 0.25, 64, 4, editor.size_multiple)
    config = tiny_model.encoder.config
    view = frame_exemplar(exemplar, config)[0]
    assert torch.equal(result.preview, window_preview(window.image, window.edit_mask, view))
    layout = preview_layout(tuple(window.image.shape[-2:]), (config.image_size,) * 2)
    assert result.preview.shape[-2:] == (layout.height, layout.width)
