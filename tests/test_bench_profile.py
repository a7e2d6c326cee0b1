"""bench.profile on the CPU: regions marked from outside, self-CPU time by region and operator."""

from __future__ import annotations

import pytest
import torch

from bench.regions import REGION_PREFIX, RegionProbe
from exemplar_core.editor import Editor, EditSettings


def _edit(editor: Editor):
    source = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    exemplar = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    settings = EditSettings(steps=2, size=32, scheduler="ddim")
    return editor.edit(source, mask, exemplar, settings)


def test_cpu_report_gives_each_region_of_an_edit_with_its_calls(tiny_model, capsys):
    editor = Editor(tiny_model, device="cpu", progress=False)
    probe = RegionProbe()
    probe.start()
    _edit(editor)
    probe.stop()
    report = probe.report(top=50)
    regions = report["regions"]
    # 2 DDIM steps with guidance: two batched UNet calls, two scheduler steps (+ set_timesteps)
    assert regions["unet"]["calls"] == 2
    assert regions["scheduler"]["calls"] == 2 * 2 + 1
    for name in ("vae_encode", "vae_decode", "exemplar_encoder"):
        assert regions[name]["calls"] == 1, name
    assert regions["exemplar_preprocess"]["calls"] >= 1
    assert all(row["ms"] >= 0 for row in regions.values())
    assert regions["unet"]["ms"] > 0
    recorded = sum(row["ms"] for row in regions.values()) / 1e3
    assert report["recorded_cpu_seconds"] == pytest.approx(recorded)
    assert 0 < report["recorded_cpu_seconds"] <= report["seconds"] * 1.05
    assert 0 < len(report["top_ops"]) <= 50
    assert {"ms", "calls", "name"} <= set(report["top_ops"][0])
    assert any("conv" in op["name"] for op in report["top_ops"])
    outside = {op["name"]: op["calls"] for op in report["top_ops_outside_unet"]}
    assert outside and not any(name.startswith(REGION_PREFIX) for name in outside)
    total = {op["name"]: op["calls"] for op in report["top_ops"]}
    # the UNet's calls are counted overall, not outside it
    assert all(calls <= total.get(name, calls) for name, calls in outside.items())
    assert any(calls < total.get(name, calls) for name, calls in outside.items())
    assert "region" in capsys.readouterr().out


def test_regions_are_unmarked_after_the_window(tiny_model):
    import diffusers

    from exemplar_core import editor as editor_module

    before = (diffusers.UNet2DConditionModel.forward, editor_module.frame_exemplar)
    probe = RegionProbe()
    probe.start()
    assert diffusers.UNet2DConditionModel.forward is not before[0]
    probe.stop()
    assert (diffusers.UNet2DConditionModel.forward, editor_module.frame_exemplar) == before
    assert "__call__" not in vars(__import__("transformers").CLIPImageProcessor)
