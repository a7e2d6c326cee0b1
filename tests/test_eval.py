from __future__ import annotations

import json
import math

import numpy as np
import pytest
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
    assert report["cases"] == 2 and report["world_seed"] == 0
    for row in report["scales"].values():
        assert 0 <= row["color_error"] <= math.sqrt(3) and 0 <= row["shape_iou"] <= 1
        assert len(row["color_error_per_case"]) == 2
        assert row["color_error"] == pytest.approx(np.mean(row["color_error_per_case"]), abs=1e-4)
        assert row["color_error_se"] >= 0
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


def test_checks_report_paired_standard_errors_from_the_per_case_errors():
    def row(errors):
        return {
            "color_error": sum(errors) / len(errors),
            "color_error_per_case": errors,
            "background_psnr_min": math.inf,
        }

    per_scale = {"0": row([0.6, 0.4, 0.5]), "3": row([0.3, 0.2, 0.25]), "5": row([0.3, 0.3, 0.2])}
    checks = quality.check_requirements(per_scale)
    monotone = checks["fidelity_not_worse_0_to_5"]
    rises = monotone["rises"]
    assert [(r["from"], r["to"]) for r in rises] == [("0", "3"), ("3", "5")]
    assert rises[0]["mean"] == pytest.approx(-0.25)
    assert rises[0]["se"] == pytest.approx(0.05 / math.sqrt(3))  # rises -0.3, -0.2, -0.25
    assert rises[1]["mean"] == pytest.approx(0.05 / 3)
    assert not monotone["passed"]  # +0.017 on average from 3 to 5
    halved = checks["color_error_halved_at_5"]
    assert not halved["passed"] and halved["ratio"] == pytest.approx(0.8 / 1.5)  # 0.53 > 0.5
    # delta method: the standard error of (x5 - R x0) / mean(x0)
    x0, x5 = np.array([0.6, 0.4, 0.5]), np.array([0.3, 0.3, 0.2])
    residual = (x5 - halved["ratio"] * x0) / 0.5
    assert halved["ratio_se"] == pytest.approx(residual.std(ddof=1) / math.sqrt(3))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cases", "0"], "at least 1 case"),
        (["--scales", "0,five"], "--scales takes numbers"),
    ],
)
def test_benchmark_names_bad_arguments(tmp_path, tiny_model, capsys, args, message):
    ckpt = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "tiny.safetensors")
    argv = ["synthetic", "--checkpoint", str(ckpt), "--out", str(tmp_path / "r"), *args]
    assert quality.main(argv) == 2
    assert message in capsys.readouterr().err


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
