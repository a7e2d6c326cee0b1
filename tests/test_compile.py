"""Compiled sampling (``exemplar_core.compile``): the inductor CPU backend gives the eager edit,
a new shape compiles anew (bounded), and every way compiling can be impossible logs its reason
and runs eager. Inductor is slow on two busy cores: one compile of a one-level UNet per module,
the shape tests on a one-line function."""

from __future__ import annotations

import logging

import pytest
import torch

from exemplar_core import compile as compiled
from exemplar_core.compile import CompiledCall, CompileError, compile_unet
from exemplar_core.editor import Editor, EditSettings
from exemplar_core.model import ModelConfigs, PaintByExampleModel

SETTINGS = EditSettings(steps=2, size=32, feather=2, scheduler="pndm")


def _quick_inductor():
    """Inductor set to build quickly on two cores: no pool of compile workers (starting one
    costs more than it saves) and scalar C++ kernels (without the vector headers gcc takes half
    the time)."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch({"compile_threads": 1, "cpp.vec_isa_ok": False})


@pytest.fixture(autouse=True)
def _quick_inductor_in_each_test():
    with _quick_inductor():
        yield


def _one_level_model() -> PaintByExampleModel:
    """The tiny model with a one-level UNet and no middle block: the fewest kernels for
    inductor to build, cross-attention kept."""
    configs = ModelConfigs.tiny()
    configs.unet.update(
        block_out_channels=[32],
        down_block_types=["CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D"],
        mid_block_type=None,
    )
    torch.manual_seed(1234)
    return PaintByExampleModel(configs).eval()


def _inputs():
    g = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, 40, 48, generator=g)
    mask = torch.zeros(1, 1, 40, 48)
    mask[..., 10:30, 12:36] = 1
    return source, mask, torch.rand(1, 3, 32, 32, generator=g)


def _edit(mode: str) -> torch.Tensor:
    editor = Editor(_one_level_model(), device="cpu", progress=False, compile=mode)
    return editor.edit(*_inputs(), SETTINGS).raw


@pytest.fixture(scope="module")
def eager_raw() -> torch.Tensor:
    return _edit("off")


@pytest.fixture(scope="module")
def compiled_run():
    """(raw result, the editor, the log) of one edit with the UNet step compiled by inductor."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(compiled.__name__)
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        with _quick_inductor():
            editor = Editor(_one_level_model(), device="cpu", progress=False, compile="compile")
            raw = editor.edit(*_inputs(), SETTINGS).raw
    finally:
        logger.removeHandler(handler)
        logger.level = level
    return raw, editor, [r.getMessage() for r in records]


def test_compiled_edit_equals_the_eager_edit(compiled_run, eager_raw):
    raw, editor, messages = compiled_run
    step = editor.model.predict_noise
    assert isinstance(step, CompiledCall) and step.active, messages
    assert any("compiling the UNet step for input [2, 4, " in m for m in messages), messages
    # inductor reorders float sums: equal to float rounding, not bit for bit
    torch.testing.assert_close(raw, eager_raw, atol=1e-4, rtol=1e-4)
    assert not torch.equal(raw, torch.zeros_like(raw))


def test_compile_off_restores_the_models_own_method():
    model = _one_level_model()
    compile_unet(model, "compile")
    assert isinstance(model.predict_noise, CompiledCall)
    compile_unet(model, "off")
    assert "predict_noise" not in vars(model)
    assert model.predict_noise.__func__ is PaintByExampleModel.predict_noise


def _double(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * 2


def test_a_new_shape_compiles_once_more_and_is_logged(caplog):
    torch._dynamo.reset()
    step = CompiledCall(_double, "compile", what="the test step")
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        for shape in ((2, 3), (2, 3), (4, 3)):
            x = torch.randn(shape)
            torch.testing.assert_close(step(x), _double(x))
    compiling = [r.getMessage() for r in caplog.records if "compiling" in r.getMessage()]
    assert compiling == [
        "compile mode 'compile': compiling the test step for input [2, 3] float32 "
        "(shape 1 of at most 8)",
        "compile mode 'compile': compiling the test step for input [4, 3] float32 "
        "(shape 2 of at most 8)",
    ]
    assert step.active


def test_past_the_shape_limit_new_shapes_run_eager_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(compiled, "MAX_SHAPES", 1)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    step = CompiledCall(_double, "compile", what="the test step")
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        for shape in ((2, 3), (4, 3), (5, 3)):
            assert torch.equal(step(torch.ones(shape)), _double(torch.ones(shape)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "compiled for 1 input shapes already" in warnings[0]
    assert "[4, 3]" in warnings[0]
    assert calls == [{"mode": None, "dynamic": False, "fullgraph": False}]


def _raising_compile(*args, **kwargs):
    raise RuntimeError("no compiler for this test")


def _compiled_fails_on_call(fn, **kwargs):
    def run(*args, **kw):
        raise RuntimeError("inductor failed\nlong trace")

    return run


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("compile raises", "compiling failed (RuntimeError: no compiler for this test)"),
        ("first call raises", "compiling failed (RuntimeError: inductor failed)"),
        ("dynamo disabled", "TorchDynamo is disabled"),
        ("no torch.compile", "has no torch.compile"),
        ("cudagraphs on the cpu", "CUDA graphs need a CUDA device and the UNet runs on cpu"),
    ],
)
def test_when_compiling_is_impossible_one_warning_names_why_and_the_step_runs_eager(
    how, reason, monkeypatch, caplog, request
):
    mode = "cudagraphs" if how == "cudagraphs on the cpu" else "compile"
    if how == "compile raises":
        monkeypatch.setattr(torch, "compile", _raising_compile)
    elif how == "first call raises":
        monkeypatch.setattr(torch, "compile", _compiled_fails_on_call)
    elif how == "dynamo disabled":  # what TORCH_COMPILE_DISABLE=1 sets
        patch = torch._dynamo.config.patch(disable=True)
        patch.__enter__()
        request.addfinalizer(lambda: patch.__exit__(None, None, None))
    elif how == "no torch.compile":
        monkeypatch.delattr(torch, "compile")
    model = PaintByExampleModel(ModelConfigs.tiny()).eval()
    x = torch.randn(1, 4, 8, 8)
    inputs = (x, torch.tensor(500), torch.randn(1, 4, 8, 8), torch.ones(1, 1, 8, 8))
    condition = torch.randn(1, 1, 32)
    with torch.no_grad():
        eager = model.predict_noise(*inputs, condition)
        step = compile_unet(model, mode)
        with caplog.at_level(logging.WARNING, logger=compiled.__name__):
            first = model.predict_noise(*inputs, condition)
            second = model.predict_noise(*inputs, condition)
    assert torch.equal(first, eager) and torch.equal(second, eager)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0], warnings
    assert "runs eager (uncompiled) instead" in warnings[0]
    assert not step.active and reason in step.fallback_reason


def test_a_recompile_of_a_known_signature_that_fails_falls_back_with_one_warning(
    caplog, monkeypatch
):
    """TorchDynamo recompiles a known signature when a guard changes (a new step count's sigmas,
    a LoRA applied after compiling): an inductor error there runs eager, never fails the edit."""
    calls = []

    def compile_failing_on_second_call(fn, **kwargs):
        def run(*args, **kw):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("inductor failed on a guard change")
            return fn(*args, **kw)

        return run

    monkeypatch.setattr(torch, "compile", compile_failing_on_second_call)
    step = CompiledCall(_double, "compile", what="the test step")
    x = torch.ones(2, 3)
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        results = [step(x) for _ in range(3)]
    assert all(torch.equal(r, _double(x)) for r in results)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "inductor failed on a guard change" in warnings[0], warnings
    assert not step.active and len(calls) == 2  # the third call ran eager


def test_an_error_of_the_inputs_themselves_is_raised_not_hidden(monkeypatch):
    monkeypatch.setattr(torch, "compile", _compiled_fails_on_call)
    step = CompiledCall(lambda x: x.view(7), "compile")
    with pytest.raises(RuntimeError, match="shape '\\[7\\]' is invalid"):
        step(torch.ones(2, 3))


def test_an_unknown_mode_is_refused_naming_the_choices():
    with pytest.raises(CompileError, match="unknown compile mode 'fast'; choose one of off"):
        compile_unet(PaintByExampleModel(ModelConfigs.tiny()), "fast")


def test_edit_command_compile_option_reaches_the_editor(tmp_path, capsys, caplog):
    import numpy as np
    from PIL import Image

    from exemplar_core.checkpoint import checkpoint_from_model, save_single_file
    from exemplar_core.cli import main

    ckpt = save_single_file(checkpoint_from_model(_one_level_model()), tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "e.png")
    base = ["edit", "--checkpoint", str(ckpt), "--source", str(tmp_path / "s.png")]
    base += ["--mask", str(tmp_path / "m.png"), "--exemplar", str(tmp_path / "e.png")]
    base += ["--steps", "2", "--size", "32", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "off.png")]) == 0
    # CUDA graphs on the CPU: the warning proves the option reached the editor; the edit is eager
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        assert main([*base, "--out", str(tmp_path / "cg.png"), "--compile", "cudagraphs"]) == 0
    assert "CUDA graphs need a CUDA device" in caplog.text
    off, cg = (np.asarray(Image.open(tmp_path / n)) for n in ("off.png", "cg.png"))
    assert np.array_equal(off, cg)
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "x.png"), "--compile", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
