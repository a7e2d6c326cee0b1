from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from exemplar_core.checkpoint import checkpoint_from_model, save_single_file
from train import eval as quality


def test_synthetic_benchmark_reports_each_scale_and_keeps_background_bit_exact(
    tmp_path, tiny_model
):
    ckpt = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "tiny.safetensors")
    out = tmp_path / "report"
    code = quality.main(
        [
            "synthetic",
            "--checkpoint",
            str(ckpt),
            "--cases",
            "2",
            "--scales",
            "0,5",
            "--steps",
            "2",
            "--out",
            str(out),
        ]
    )
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
    good = {
        "0": {"color_error": 0.4, "background_psnr_min": 50.0},
        "1": {"color_error": 0.3, "background_psnr_min": 50.0},
        "5": {"color_error": 0.15, "background_psnr_min": 46.0},
    }
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

        assert settings.similarity == 0.0, "the probe edits unconditionally"
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


def _world_report(world_seed, per_scale_errors, checkpoint="m.safetensors", shape=0.5):
    """A ``run_synthetic``-shaped report of one world from per-case colour errors per scale."""
    return {
        "checkpoint": checkpoint,
        "steps": 20,
        "scheduler": "ddim",
        "resolution": 64,
        "seed": 0,
        "world_seed": world_seed,
        "cases": len(next(iter(per_scale_errors.values()))),
        "hole_fill": {"colour_error": 0.2, "worst": 0.3},
        "scales": {
            key: {
                "color_error": float(np.mean(errors)) if errors else math.nan,
                "color_error_per_case": errors,
                "shape_iou": shape,
                "foreground_fraction": 0.5,
                "background_psnr_min": math.inf,
            }
            for key, errors in per_scale_errors.items()
        },
    }


def test_pool_merges_worlds_case_by_case_and_checks_the_pooled_errors():
    # world 1 alone fails "halved" (0.3 / 0.5 = 0.6); world 2 alone passes (0.1 / 0.5); pooled
    # over all six cases: s5 1.0 / 6 against s0 0.5; the scales both worlds have are 0 and 5
    one = _world_report(1, {"0": [0.5, 0.5], "1": [0.4, 0.4], "5": [0.3, 0.3]}, shape=0.4)
    two = _world_report(2, {"0": [0.4, 0.6, 0.5, 0.5], "5": [0.1, 0.1, 0.1, 0.1]}, shape=0.7)
    assert not quality.check_requirements(one["scales"])["color_error_halved_at_5"]["passed"]
    pooled = quality.pool_reports([one, two], ["a.json", "b.json"])
    assert list(pooled["scales"]) == ["0", "5"]
    assert pooled["cases"] == 6 and pooled["world_seeds"] == [1, 2]
    assert pooled["scales"]["5"]["color_error"] == pytest.approx(1.0 / 6)
    assert pooled["scales"]["0"]["color_error_se"] == pytest.approx(
        np.std([0.5, 0.5, 0.4, 0.6, 0.5, 0.5], ddof=1) / math.sqrt(6)
    )
    # shape agreement weighted by each world's cases: (2 * 0.4 + 4 * 0.7) / 6
    assert pooled["scales"]["5"]["shape_iou"] == pytest.approx(0.6)
    halved = pooled["checks"]["color_error_halved_at_5"]
    assert halved["passed"] and halved["ratio"] == pytest.approx((1.0 / 6) / 0.5)
    assert pooled["per_world"] == {"1": {"0": 0.5, "5": 0.3}, "2": {"0": 0.5, "5": 0.1}}
    assert pooled["pooled_from"] == ["a.json", "b.json"]


@pytest.mark.parametrize(
    "second, message",
    [
        (_world_report(1, {"0": [0.5], "5": [0.2]}), "world seed(s) [1] appear in more than one"),
        (
            _world_report(2, {"0": [0.5], "5": [0.2]}, checkpoint="other.safetensors"),
            "has checkpoint 'other.safetensors'",
        ),
        (_world_report(2, {"0": [0.5], "5": []}), "no per-case colour errors at s = 5"),
        (_world_report(2, {"3": [0.5]}), "share no similarity scale"),
        ({"scales": {}}, "is not a report of 'python -m train.eval synthetic'"),
        ({**_world_report(2, {"0": [0.5]}), "scales": [0.5]}, "'scales' must map each scale"),
        (
            {**_world_report(2, {"0": [0.5]}), "scales": {"0": {"color_error_per_case": [0.5]}}},
            "lacks ['shape_iou'",
        ),
    ],
)
def test_pool_refuses_reports_that_cannot_be_pooled(second, message):
    first = _world_report(1, {"0": [0.5, 0.4], "5": [0.2, 0.3]})
    with pytest.raises(
        ValueError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        quality.pool_reports([first, second], ["first.json", "second.json"])


def test_pool_command_prints_writes_and_exits_by_the_verdict(tmp_path, capsys):
    good = [_world_report(w, {"0": [0.5, 0.6], "5": [0.2, 0.25]}) for w in (3, 4)]
    bad = _world_report(5, {"0": [0.5, 0.5], "5": [0.45, 0.4]})
    paths = []
    for i, report in enumerate([*good, bad]):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(report))
    out = tmp_path / "pooled" / "report.json"
    argv = ["pool", str(paths[0]), str(paths[1]), "--out", str(out), "--strict"]
    assert quality.main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 held-out cases pooled from 2 worlds (seeds 3, 4)" in printed
    assert "PASS color_error_halved_at_5" in printed
    assert json.loads(out.read_text())["cases"] == 4
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        quality.main(argv)
    # never over one of its own inputs, even with --overwrite
    with pytest.raises(SystemExit, match="is one of the reports being pooled"):
        quality.main(["pool", str(paths[0]), str(paths[1]), "--out", str(paths[1]), "--overwrite"])
    assert json.loads(paths[1].read_text())["world_seed"] == 4
    # all three worlds: s5 1.75 / 6 against s0 3.2 / 6, a ratio of 0.55; --strict makes it rc 1
    assert quality.main(["pool", *map(str, paths), "--strict"]) == 1
    assert "FAIL color_error_halved_at_5" in capsys.readouterr().out
    (tmp_path / "broken.json").write_text("{not json")
    assert quality.main(["pool", str(paths[0]), str(tmp_path / "broken.json")]) == 2
    assert "cannot read report" in capsys.readouterr().err
    assert quality.main(["pool", str(paths[0])]) == 2
    assert "at least 2 reports" in capsys.readouterr().err
