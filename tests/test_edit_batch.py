"""Editor.edit_batch: batched edits equal edit() of each request, grouped by what the UNet can
share, with a bad request failing alone; edit() itself is unchanged by the shared code path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from exemplar_core import crop
from exemplar_core.editor import EditError, Editor, EditRequest, EditSettings

# Batched float32 matrix products sum in another order than a batch of one: results agree to
# this (on 0..1 images; observed ~3e-6), and exactly at max_batch=1.
ATOL = 1e-4

BASE = EditSettings(steps=2, size=64, feather=4, seed=0)


@pytest.fixture(scope="module")
def editor(tiny_configs):
    from exemplar_core.model import PaintByExampleModel

    torch.manual_seed(1234)
    return Editor(PaintByExampleModel(tiny_configs).eval(), device="cpu", progress=False)


def _request(inputs=0, h=64, w=80, **settings) -> EditRequest:
    """Random source, mask and exemplar drawn from seed ``inputs``; ``settings`` over BASE."""
    g = torch.Generator().manual_seed(inputs)
    source = torch.rand(1, 3, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4 : h // 2, w // 4 : w // 2] = 1
    exemplar = torch.rand(1, 3, 40, 40, generator=g)
    return EditRequest(source, mask, exemplar, dataclasses.replace(BASE, **settings))


def _edit(editor, request: EditRequest):
    return editor.edit(
        request.source, request.edit_mask, request.exemplar, request.settings, request.exemplar_mask
    )


def _spy_batches(editor, monkeypatch) -> list[int]:
    """The batch size of every Editor.sample call from now on."""
    batches: list[int] = []
    original = editor.sample

    def spy(masked_latent, *args, **kwargs):
        batches.append(masked_latent.shape[0])
        return original(masked_latent, *args, **kwargs)

    monkeypatch.setattr(editor, "sample", spy)
    return batches


MIXED = [
    _request(0),
    _request(1, seed=1),  # same key as the first: one UNet batch
    _request(2, h=96, w=96, size=128, seed=2),  # another latent size
    _request(3, scheduler="dpmpp_2m", similarity=3.0, color_match=True, paste_back=False),
    _request(4, seed=4, mask_grow=3, mask_blur=2),  # joins the first two
]


def test_batch_of_mixed_sizes_and_settings_equals_each_edit(editor, monkeypatch):
    batches = _spy_batches(editor, monkeypatch)
    results = editor.edit_batch(MIXED, max_batch=8)
    assert sorted(batches) == [1, 1, 3]  # the three alike together; size and settings apart
    for request, result in zip(MIXED, results, strict=True):
        alone = _edit(editor, request)
        assert result.region == alone.region
        assert result.image.shape == alone.image.shape
        torch.testing.assert_close(result.image, alone.image, atol=ATOL, rtol=0)
        torch.testing.assert_close(result.raw, alone.raw, atol=ATOL, rtol=0)
        assert torch.equal(result.preview, alone.preview)


def test_max_batch_one_is_exactly_edit(editor, monkeypatch):
    batches = _spy_batches(editor, monkeypatch)
    requests = MIXED[:2]
    results = editor.edit_batch(requests, max_batch=1)
    assert batches == [1, 1]
    for request, result in zip(requests, results, strict=True):
        alone = _edit(editor, request)
        assert torch.equal(result.image, alone.image) and torch.equal(result.raw, alone.raw)


def test_groups_are_split_into_chunks_of_max_batch(editor, monkeypatch):
    batches = _spy_batches(editor, monkeypatch)
    requests = [_request(i, seed=i, steps=1) for i in range(5)] + [_request(9, steps=1, size=128)]
    results = editor.edit_batch(requests, max_batch=2)
    assert sorted(batches) == [1, 1, 2, 2]
    assert all(r.image.shape == (1, 3, 64, 80) for r in results)


@pytest.mark.parametrize(
    "settings", [{"scheduler": "euler_a"}, {"scheduler": "ddim", "eta": 0.5}], ids=str
)
def test_schedulers_that_draw_noise_are_never_batched(editor, monkeypatch, settings):
    batches = _spy_batches(editor, monkeypatch)
    # two seeds, and the same seed twice: each draws its steps' noise from its own generator
    requests = [_request(0, seed=s, steps=2, **settings) for s in (1, 2, 2)]
    results = editor.edit_batch(requests, max_batch=8)
    assert batches == [1, 1, 1]
    for request, result in zip(requests, results, strict=True):
        assert torch.equal(result.image, _edit(editor, request).image)


def test_a_bad_request_fails_alone_with_a_message_naming_the_problem(editor):
    good = _request(0, steps=1)
    nan_source = good.source.clone()
    nan_source[..., 3, 3] = float("nan")
    requests = [
        good,
        dataclasses.replace(good, edit_mask=good.edit_mask[..., :32, :]),
        dataclasses.replace(good, source=nan_source),
        dataclasses.replace(good, exemplar=torch.rand(2, 3, 40, 40)),
        _request(1, seed=1, steps=1),
    ]
    results = editor.edit_batch(requests)
    assert isinstance(results[1], EditError)
    assert "mask is 80x32 but the source is 80x64" in str(results[1])
    assert isinstance(results[2], EditError) and "NaN" in str(results[2])
    assert isinstance(results[3], EditError) and "one exemplar per edit" in str(results[3])
    for i in (0, 4):
        torch.testing.assert_close(
            results[i].image, _edit(editor, requests[i]).image, atol=ATOL, rtol=0
        )


def test_a_failed_group_is_reported_for_each_member_and_the_others_go_on(editor, monkeypatch):
    original = editor.sample

    def fail_on_a_pair(masked_latent, *args, **kwargs):
        if masked_latent.shape[0] == 2:
            raise RuntimeError("out of memory (simulated)")
        return original(masked_latent, *args, **kwargs)

    monkeypatch.setattr(editor, "sample", fail_on_a_pair)
    requests = [_request(0, steps=1), _request(1, seed=1, steps=1), _request(2, steps=1, size=128)]
    results = editor.edit_batch(requests)
    assert [str(r) for r in results[:2]] == ["out of memory (simulated)"] * 2
    assert results[2].image.shape == (1, 3, 64, 80)


def test_empty_mask_returns_the_source_unchanged_in_a_batch(editor, monkeypatch):
    batches = _spy_batches(editor, monkeypatch)
    empty = _request(0, steps=1)
    empty = dataclasses.replace(empty, edit_mask=torch.zeros_like(empty.edit_mask))
    results = editor.edit_batch([empty, _request(1, steps=1)])
    assert torch.equal(results[0].image, empty.source) and results[0].region is None
    assert batches == [1]


def test_max_batch_below_one_is_refused(editor):
    with pytest.raises(EditError, match="max_batch must be a whole number >= 1, got 0"):
        editor.edit_batch([_request(0)], max_batch=0)


def test_edit_is_unchanged_by_the_shared_code_path(editor):
    """edit() against the edit composed by hand from the model's parts in diffusers' order
    (noise, then the VAE posterior sample, from one seeded generator), as it was computed
    before edit() and edit_batch() shared a code path."""
    request = _request(0, steps=2, scheduler="euler_a", seed=7)
    s = request.settings
    window = crop.prepare_window(
        request.source, request.edit_mask, s.context_margin, s.size, s.feather, editor.size_multiple
    )
    generator = torch.Generator().manual_seed(s.seed)
    latent_hw = (window.region.height // 8, window.region.width // 8)
    noise = torch.randn((1, 4, *latent_hw), generator=generator)
    masked_latent = editor.model.encode_latent(window.masked_image * 2 - 1, generator=generator)
    keep = torch.nn.functional.interpolate(window.keep_mask, size=latent_hw, mode="bilinear")
    condition = editor.encode_exemplar(request.exemplar)
    latents = editor.sample(masked_latent, keep, condition, s, generator, noise=noise)
    raw = ((editor.model.decode_latent(latents) + 1) / 2).clamp(0, 1)
    expected = crop.stitch(request.source, raw, window.region, request.edit_mask, s.feather)
    assert torch.equal(_edit(editor, request).image, expected)
