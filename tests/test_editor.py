from __future__ import annotations

import pytest
import torch

from exemplar_core.editor import EditError, Editor, EditSettings
from exemplar_core.preprocess import ExemplarError

FAST = EditSettings(steps=2, size=64, feather=4, scheduler="ddim")


@pytest.fixture()
def editor(tiny_model):
    return Editor(tiny_model, device="cpu", progress=False)


def _inputs(h=96, w=128):
    g = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., 30:60, 40:90] = 1
    exemplar = torch.rand(1, 3, 40, 40, generator=g)
    return source, mask, exemplar


def test_same_seed_same_result_and_another_seed_differs(editor):
    source, mask, exemplar = _inputs()
    a = editor.edit(source, mask, exemplar, FAST).image
    b = editor.edit(source, mask, exemplar, FAST).image
    c = editor.edit(source, mask, exemplar, EditSettings(**{**FAST.__dict__, "seed": 7})).image
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_result_has_source_size_and_is_untouched_outside_the_feather_band(editor):
    source, mask, exemplar = _inputs()
    out = editor.edit(source, mask, exemplar, FAST).image
    assert out.shape == source.shape
    outside = torch.ones(96, 128, dtype=torch.bool)
    outside[30 - 4 : 60 + 4, 40 - 4 : 90 + 4] = False
    assert torch.equal(out[..., outside], source[..., outside])
    assert not torch.allclose(out[..., 30:60, 40:90], source[..., 30:60, 40:90])


def test_no_paste_back_returns_the_processed_window(editor):
    source, mask, exemplar = _inputs()
    res = editor.edit(
        source, mask, exemplar, EditSettings(**{**FAST.__dict__, "paste_back": False})
    )
    assert res.image.shape == (1, 3, res.region.height, res.region.width)


def test_whole_image_mode_processes_the_whole_image_at_multiples_of_the_model_size(editor):
    source, mask, exemplar = _inputs(90, 130)
    s = EditSettings(**{**FAST.__dict__, "whole_image": True, "paste_back": False})
    res = editor.edit(source, mask, exemplar, s)
    assert (res.region.x0, res.region.y0, res.region.x1, res.region.y1) == (0, 0, 130, 90)
    assert (
        res.region.width % editor.size_multiple == 0
        and res.region.height % editor.size_multiple == 0
    )


def test_empty_mask_returns_source_unchanged_with_a_warning(editor, caplog):
    source, mask, exemplar = _inputs()
    res = editor.edit(source, torch.zeros_like(mask), exemplar, FAST)
    assert torch.equal(res.image, source) and res.region is None
    assert "empty" in caplog.text


def test_full_mask_repaints_everything(editor):
    source, mask, exemplar = _inputs()
    out = editor.edit(source, torch.ones_like(mask), exemplar, FAST).image
    assert out.shape == source.shape and (out - source).abs().mean() > 0.05


def _unet_batches(editor, monkeypatch) -> list[int]:
    """The batch size of every UNet call the editor makes from now on."""
    batches = []
    original = editor.model.predict_noise

    def spy(x, *args, **kwargs):
        batches.append(x.shape[0])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(editor.model, "predict_noise", spy)
    return batches


def test_similarity_one_skips_the_unconditional_pass(editor, monkeypatch):
    source, mask, exemplar = _inputs()
    batches = _unet_batches(editor, monkeypatch)
    editor.edit(source, mask, exemplar, EditSettings(**{**FAST.__dict__, "similarity": 1.0}))
    assert batches == [1, 1]
    batches.clear()
    editor.edit(source, mask, exemplar, FAST)
    assert batches == [2, 2], "condition and learned vector go through the UNet in one batch"


def test_similarity_zero_is_the_learned_vector_alone_in_one_pass(editor, monkeypatch):
    source, mask, exemplar = _inputs()
    # A similarity too small to move ε in float32 takes the two-pass path: the same formula.
    two_pass = editor.edit(
        source, mask, exemplar, EditSettings(**{**FAST.__dict__, "similarity": 1e-30})
    )
    batches = _unet_batches(editor, monkeypatch)
    zero = EditSettings(**{**FAST.__dict__, "similarity": 0.0})
    one_pass = editor.edit(source, mask, exemplar, zero)
    assert batches == [1, 1], "s = 0 needs no conditional pass"
    torch.testing.assert_close(one_pass.image, two_pass.image, atol=1e-5, rtol=0)
    other = editor.edit(source, mask, exemplar.flip(-1) * 0.5, zero)
    assert torch.equal(other.image, one_pass.image), "at s = 0 the exemplar plays no part"


def test_colour_match_moves_kept_area_statistics_towards_the_source(editor):
    source, mask, exemplar = _inputs()
    plain = editor.edit(
        source, mask, exemplar, EditSettings(**{**FAST.__dict__, "paste_back": False})
    )
    s = EditSettings(**{**FAST.__dict__, "paste_back": False, "color_match": True})
    matched = editor.edit(source, mask, exemplar, s)
    from exemplar_core import crop

    window = crop.crop_image(source, matched.region)
    keep = crop.crop_mask(1 - mask, matched.region) > 0.5
    err_plain = (plain.raw.mean(dim=(2, 3)) - (window * keep).sum((2, 3)) / keep.sum()).abs().sum()
    err_matched = (
        (matched.raw.mean(dim=(2, 3)) - (window * keep).sum((2, 3)) / keep.sum()).abs().sum()
    )
    assert err_matched < err_plain


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"mask": torch.ones(1, 1, 50, 50)}, EditError, "mask is 50x50 but the source is 128x96"),
        ({"exemplar": torch.rand(1, 3, 10, 40)}, ExemplarError, "at least 16 px"),
        ({"source": torch.full((1, 3, 96, 128), float("nan"))}, EditError, "NaN"),
        ({"size": 100}, EditError, "size must be a positive multiple of"),
    ],
)
def test_bad_input_gets_a_clear_error(editor, change, error, message):
    source, mask, exemplar = _inputs()
    args = {"source": source, "mask": mask, "exemplar": exemplar, **change}
    settings = EditSettings(**{**FAST.__dict__, "size": args.pop("size", FAST.size)})
    with pytest.raises(error, match=message):
        editor.edit(args["source"], args["mask"], args["exemplar"], settings)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", 0, "steps must be a whole number between 1 and 1000, got 0"),
        (
            "similarity",
            float("nan"),
            "similarity must be a finite number between 0 and 50, got nan",
        ),
        (
            "similarity",
            float("inf"),
            "similarity must be a finite number between 0 and 50, got inf",
        ),
        ("similarity", 1e300, "similarity must be a finite number between 0 and 50, got 1e[+]300"),
        ("seed", 2**64, "seed must be a whole number between 0 and 18446744073709551615"),
        ("seed", -1, "seed must be a whole number between 0 and"),
        ("context_margin", float("nan"), "context_margin must be a finite number"),
        ("feather", -1, "feather must be a whole number between 0 and 256, got -1"),
        ("mask_blur", -2, "mask_blur must be a whole number between 0 and 256, got -2"),
        ("mask_grow", 2000, "mask_grow must be a whole number between -1024 and 1024"),
        ("eta", float("nan"), "eta must be a finite number between 0 and 1, got nan"),
        ("size", 100_000, "size must be a whole number between 1 and 2048"),
        ("steps", 2.5, "steps must be a whole number"),
        ("scheduler", "plms2", "scheduler must be one of pndm, ddim"),
        ("exemplar_expand", 0.9, "exemplar_expand must be a finite number between 1 and 4"),
        ("exemplar_expand", float("nan"), "exemplar_expand must be a finite number .* got nan"),
        ("exemplar_resize", "pad", "exemplar_resize must be one of .*pad_to_square, got 'pad'"),
    ],
)
def test_settings_refuse_nan_infinity_and_out_of_range_values_by_name(field, value, message):
    with pytest.raises(EditError, match=message):
        EditSettings(**{field: value})


def test_a_size_the_model_cannot_use_is_named_as_the_user_gave_it(editor):
    source, mask, exemplar = _inputs()
    by_option = EditSettings.from_options(steps=2, size=100, scheduler="ddim")
    with pytest.raises(EditError, match="^--size must be a positive multiple of 16, got 100"):
        editor.edit(source, mask, exemplar, by_option)
    with pytest.raises(EditError, match="^--scale must be a finite number between 0 and 50"):
        EditSettings.from_options({"similarity": "--scale"}, similarity=-1.0)


def test_a_nan_learned_vector_is_refused_only_where_it_takes_part(editor):
    source, mask, exemplar = _inputs()
    with torch.no_grad():
        editor.model.encoder.learnable_vector.fill_(float("nan"))
    s1 = EditSettings(**{**FAST.__dict__, "similarity": 1.0})
    assert torch.isfinite(editor.edit(source, mask, exemplar, s1).image).all()
    with pytest.raises(ValueError, match="the exemplar encoder of the model produced NaN"):
        editor.edit(source, mask, exemplar, FAST)


def test_the_learned_vector_is_checked_once_per_editor(editor, monkeypatch):
    checked = []
    monkeypatch.setattr(editor, "_check_output", lambda out, part, module: checked.append(part))
    first, second = editor._learned_vector(2), editor._learned_vector(1)
    assert checked == ["exemplar encoder"] and first.shape[0] == 2 and second.shape[0] == 1


def test_the_top_of_the_seed_range_works(editor):
    source, mask, exemplar = _inputs()
    settings = EditSettings(**{**FAST.__dict__, "seed": 2**64 - 1})
    out = editor.edit(source, mask, exemplar, settings).image
    assert torch.isfinite(out).all() and out.shape == source.shape


@pytest.mark.parametrize(
    "part, module, named",
    [
        ("exemplar encoder", "encoder", "exemplar encoder"),
        ("UNet", "unet", "UNet"),
        ("VAE decoder", "vae.decoder", "VAE decoder"),
    ],
)
def test_nan_weights_fail_naming_the_file_and_the_part(tiny_model, tmp_path, part, module, named):
    from exemplar_core.checkpoint import checkpoint_from_model, save_single_file
    from exemplar_core.checks import NonFiniteOutputError

    target = tiny_model.get_submodule(module)
    with torch.no_grad():
        next(target.parameters()).fill_(float("nan"))
    path = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "diverged.safetensors")
    editor = Editor.from_file(path, device="cpu")
    editor.progress = False
    source, mask, exemplar = _inputs()
    with pytest.raises(NonFiniteOutputError) as caught:
        editor.edit(source, mask, exemplar, FAST)
    message = str(caught.value)
    assert f"the {named} of {path} produced NaN" in message
    assert "weights hold NaN or infinite values" in message and "black image" in message


def test_mask_grow_enlarges_the_repainted_area_and_the_feather_stays_separate(editor):
    source, mask, exemplar = _inputs()
    plain = editor.edit(source, mask, exemplar, FAST).image
    settings = EditSettings(**{**FAST.__dict__, "mask_grow": 6})
    grown = editor.edit(source, mask, exemplar, settings).image
    ring = torch.zeros(96, 128, dtype=torch.bool)  # 6 px around the mask: repainted when grown
    ring[30 - 6 : 60 + 6, 40 - 6 : 90 + 6] = True
    ring[30 - 4 : 60 + 4, 40 - 4 : 90 + 4] = False  # (beyond the plain edit's feather band)
    assert torch.equal(plain[..., ring], source[..., ring])
    assert not torch.equal(grown[..., ring], source[..., ring])
    outside = torch.ones(96, 128, dtype=torch.bool)  # grow 6 + feather 4: the source beyond
    outside[30 - 10 : 60 + 10, 40 - 10 : 90 + 10] = False
    assert torch.equal(grown[..., outside], source[..., outside])


def test_a_shrink_that_removes_the_mask_names_the_option(editor):
    source, mask, exemplar = _inputs()
    settings = EditSettings.from_options(steps=2, size=64, scheduler="ddim", mask_grow=-20)
    with pytest.raises(EditError, match="^--mask-grow -20 removes the whole mask"):
        editor.edit(source, mask, exemplar, settings)
