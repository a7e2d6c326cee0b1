from __future__ import annotations

import json
import math

import torch

from exemplar_core.formats import checkpoint_from_model, save_single_file
from train import eval as quality


def test_synthetic_benchmark_reports_each_scale_and_keeps_background_bit_exact(
    tmp_path, tiny_model
):
    ckpt = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "tiny.safetensors")
    out = tmp_path / "report"
    code = quality.main([
        "synthetic", "--checkpoint", str(ckpt), "--cases", "2", "--scales", "0,5",
        "--steps", "2", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["scales"]) == {"0", "5"}
    for row in report["scales"].values():
        assert 0 <= row["color_error"] <= math.sqrt(3) and 0 <= row["shape_iou"] <= 1
        assert math.isinf(row["background_psnr_min"]), "paste-back keeps the outside bit-exact"
    assert report["checks"]["background_psnr_ge_45"]["passed"]
    assert {"color_error_halved_at_5", "fidelity_not_worse_0_to_5"} <= set(report["checks"])
    assert (out / "chart.png").stat().st_size > 0
    fill = report["hole_fill"]
    assert 0 <= fill["colour_error"] <= fill["worst"] <= math.sqrt(3)


def test_requirement_checks_follow_the_issue_targets():
    good = {"0": {"color_error": 0.4, "background_psnr_min": 50.0},
            "1": {"color_error": 0.3, "background_psnr_min": 50.0},
            "5": {"color_error": 0.15, "background_psnr_min": 46.0}}  # fmt: skip
    checks = quality.check_requirements(good)
    assert all(c["passed"] for c in checks.values())
    bad = {**good, "5": {"color_error": 0.25, "background_psnr_min": 40.0}}
    checks = quality.check_requirements(bad)
    assert not checks["color_error_halved_at_5"]["passed"]
    assert not checks["background_psnr_ge_45"]["passed"]
    worse = {**good, "1": {"color_error": 0.5, "background_psnr_min": 50.0}}
    assert not quality.check_requirements(worse)["fidelity_not_worse_0_to_5"]["passed"]


class _PaintHole:
    """Stands in for the editor: fills the edit mask with one colour (None = leave the source)."""

    native_size = 32

    def __init__(self, colour):
        self.colour = colour

    def edit(self, source, mask, exemplar, settings):
        from types import SimpleNamespace

        assert settings.scale == 0.0, "the probe edits unconditionally"
        image = source.clone()
        if self.colour is not None:
            fill = torch.tensor(self.colour).view(1, 3, 1, 1).expand_as(image)
            image = torch.where(mask > 0.5, fill, image)
        return SimpleNamespace(image=image)


def test_hole_fill_probe_measures_the_hole_against_the_scene_colour():
    kept = quality.hole_fill_probe(_PaintHole(None))
    assert kept["worst"] < 0.01, "a hole left as the scene scores ~0 (only the light noise)"
    grey = quality.hole_fill_probe(_PaintHole((0.5, 0.5, 0.5)))
    expected = [
        float(torch.linalg.vector_norm(torch.tensor(c) / 255 - 0.5)) for c in quality.PROBE_COLOURS
    ]
    assert math.isclose(grey["colour_error"], sum(expected) / len(expected), abs_tol=0.01)
    assert math.isclose(grey["worst"], max(expected), abs_tol=0.01)
