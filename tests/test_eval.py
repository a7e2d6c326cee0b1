from __future__ import annotations

import json
import math

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
