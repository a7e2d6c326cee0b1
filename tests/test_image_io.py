from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from exemplar_core.image_io import ImageError, load_mask, load_rgb, save_rgb


def test_rgba_greyscale_and_16_bit_pngs_load_as_rgb_0_to_1(tmp_path):
    rgba = np.zeros((8, 6, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 6), 128, np.uint8), "L").save(tmp_path / "g.png")
    Image.fromarray(np.full((8, 6), 65535, np.uint16)).save(tmp_path / "w16.png")
    a, g, w = (load_rgb(tmp_path / n) for n in ("a.png", "g.png", "w16.png"))
    assert a.shape == g.shape == w.shape == (1, 3, 8, 6)
    assert torch.allclose(a[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(g, torch.full_like(g, 128 / 255))
    assert torch.allclose(w, torch.ones_like(w))


def test_mask_is_white_equals_edit_and_transparent_cutouts_use_alpha(tmp_path):
    m = np.zeros((4, 4), np.uint8)
    m[1:3, 1:3] = 255
    Image.fromarray(m, "L").save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png")
    assert mask.shape == (1, 1, 4, 4) and mask[0, 0, 1, 1] == 1 and mask[0, 0, 0, 0] == 0
    cut = np.zeros((4, 4, 4), np.uint8)
    cut[..., 3] = 255
    cut[1:3, 1:3, 3] = 0  # transparent hole = edit, as ComfyUI's LoadImage
    Image.fromarray(cut, "RGBA").save(tmp_path / "c.png")
    mask = load_mask(tmp_path / "c.png")
    assert mask[0, 0, 1, 1] == 1 and mask[0, 0, 0, 0] == 0


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_rgb(tmp_path / "nope.png", "source")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match="bad.png"):
        load_rgb(tmp_path / "bad.png", "source")


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    target = tmp_path / "out.png"
    save_rgb(torch.zeros(1, 3, 4, 4), target)
    with pytest.raises(ImageError, match="already exists"):
        save_rgb(torch.ones(1, 3, 4, 4), target)
    assert load_rgb(target).max() == 0
    save_rgb(torch.ones(1, 3, 4, 4), target, overwrite=True)
    assert load_rgb(target).min() == 1


def test_an_exemplars_alpha_is_kept_unless_fully_opaque(tmp_path, caplog):
    from exemplar_core.image_io import load_exemplar

    la = np.zeros((8, 6, 2), np.uint8)
    la[..., 0] = 200
    la[2:6, 1:5, 1] = 255  # an opaque object on a transparent background, greyscale
    Image.fromarray(la, "LA").save(tmp_path / "cut.png")
    cut = load_exemplar(tmp_path / "cut.png")
    assert cut.shape == (1, 4, 8, 6)
    assert torch.equal(cut[0, 3], torch.from_numpy(la[..., 1] / 255.0).float())
    assert torch.allclose(cut[0, :3], torch.full((3, 8, 6), 200 / 255))
    opaque = np.full((8, 6, 4), 255, np.uint8)
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    Image.fromarray(np.zeros((8, 6, 4), np.uint8), "RGBA").save(tmp_path / "clear.png")
    assert load_exemplar(tmp_path / "opaque.png").shape == (1, 3, 8, 6)
    # whether an alpha marks an object is preprocess.alpha_object_mask's decision, not the loader's
    assert load_exemplar(tmp_path / "clear.png").shape == (1, 4, 8, 6)
    assert not caplog.text
