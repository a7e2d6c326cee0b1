"""Memory savers of the trainer: the optimiser choice (AdamW, 8-bit AdamW, Adafactor) and the EMA
kept on the CPU or updated every N steps; each resumes exactly."""

from __future__ import annotations

import sys

import pytest
import torch
from train_support import assert_same_weights, checkpoint_weights, kill_in_micro_batch, tiny_config

from train.__main__ import main as train_main
from train.config import ConfigError, to_toml
from train.ema import EMA
from train.optim import build_optimizer, state_bytes, state_tensors
from train.trainer import train


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(96, 64), (64,), (8, 4, 3, 3)]
    return [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]


def _step(optimizer, params, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# lr, betas, weight_decay, eps
ADAM = (3e-4, (0.8, 0.95), 0.05, 1e-6)


def _adam_options(optimizer) -> tuple:
    group = optimizer.param_groups[0]
    return group["lr"], group["betas"], group["weight_decay"], group["eps"]


def test_default_optimizer_is_torch_adamw_with_the_configured_options():
    params = _params()
    optimizer = build_optimizer(params, "adamw", *ADAM)
    assert type(optimizer) is torch.optim.AdamW
    assert _adam_options(optimizer) == ADAM
    reference_params = _params()
    lr, betas, weight_decay, eps = ADAM
    reference = torch.optim.AdamW(
        reference_params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps
    )
    for seed in range(3):
        _step(optimizer, params, seed)
        _step(reference, reference_params, seed)
    assert all(torch.equal(a, b) for a, b in zip(params, reference_params, strict=True))


def test_fused_adamw_is_torch_fused_adamw_and_matches_the_default_to_rounding():
    params, reference_params = _params(), _params()
    fused = build_optimizer(params, "adamw", *ADAM, fused=True)
    reference = build_optimizer(reference_params, "adamw", *ADAM)
    assert fused.param_groups[0]["fused"] is True and _adam_options(fused) == ADAM
    assert not reference.param_groups[0]["fused"]
    for seed in range(3):
        _step(fused, params, seed)
        _step(reference, reference_params, seed)
    assert not all(torch.equal(a, b) for a, b in zip(params, _params(), strict=True))  # moved
    for a, b in zip(params, reference_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adamw8bit_is_bitsandbytes_with_the_adam_options_and_one_byte_moments():
    import bitsandbytes as bnb

    params = _params()
    optimizer = build_optimizer(params, "adamw8bit", *ADAM)
    assert type(optimizer) is bnb.optim.AdamW8bit
    assert _adam_options(optimizer) == ADAM
    before = [p.detach().clone() for p in params]
    _step(optimizer, params, 0)
    assert all(not torch.equal(a, b) for a, b in zip(params, before, strict=True))
    big = optimizer.state[params[0]]  # 6144 values: quantised (bitsandbytes' floor is 4096)
    assert big["state1"].dtype == torch.uint8 and big["state2"].dtype == torch.uint8
    assert optimizer.state[params[1]]["state1"].dtype == torch.float32  # small: fp32 moments


def test_adafactor_is_torch_adafactor_with_lr_and_weight_decay():
    params = _params()
    optimizer = build_optimizer(params, "adafactor", 2e-4, (0.9, 0.999), 0.03, 1e-8)
    assert type(optimizer) is torch.optim.Adafactor
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (2e-4, 0.03)
    _step(optimizer, params, 0)
    state = optimizer.state[params[0]]  # a matrix: one row and one column vector
    assert state["row_var"].shape == (96, 1) and state["col_var"].shape == (1, 64)


def test_state_bytes_counts_the_moments_of_adamw_exactly():
    params = _params()
    optimizer = build_optimizer(params, "adamw", 1e-3)
    _step(optimizer, params, 0)
    values = sum(p.numel() for p in params)
    # exp_avg and exp_avg_sq in fp32 plus one fp32 step counter per parameter tensor.
    assert state_bytes(optimizer) == 2 * 4 * values + 4 * len(params)


def test_unknown_optimizer_and_bad_ema_every_are_refused(tmp_path, data):
    with pytest.raises(ConfigError, match=r"train.optimizer = 'sgd' is not one of \['adamw'"):
        tiny_config(tmp_path, data, train={"optimizer": "sgd"})
    with pytest.raises(ConfigError, match="fused_optimizer = true needs train.optimizer"):
        tiny_config(tmp_path, data, train={"optimizer": "adafactor", "fused_optimizer": True})
    with pytest.raises(ConfigError, match="train.ema_every must be >= 1"):
        tiny_config(tmp_path, data, train={"ema_every": 0})
    with pytest.raises(ConfigError, match=r"train.ema_device = 'gpu' is not one of"):
        tiny_config(tmp_path, data, train={"ema_device": "gpu"})


def test_missing_bitsandbytes_for_adamw8bit_exits_2_before_any_work(
    tmp_path, data, monkeypatch, capsys
):
    out = tmp_path / "run"
    config = tmp_path / "config.toml"
    config.write_text(to_toml(tiny_config(out, data, train={"optimizer": "adamw8bit"})))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes fails
    assert train_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.optimizer = 'adamw8bit' needs bitsandbytes" in err
    assert "pip install bitsandbytes" in err and "Traceback" not in err
    assert not out.exists()  # no folder made, no data read


# -- EMA ---------------------------------------------------------------------------------------


def test_ema_every_step_keeps_the_warmed_up_decay():
    ema = EMA(_params(), decay=0.99)
    decays = []
    for _ in range(200):
        decays.append(ema.current_decay())
        ema.update()
    assert decays == [min(0.99, (1 + n) / (10 + n)) for n in range(200)]


@pytest.mark.parametrize("every", [3, 7])
def test_ema_every_n_steps_matches_n_single_updates_of_a_still_weight(every):
    """With the weight still between updates, one move by the product of N decays is N moves."""
    params, reference_params = _params(), _params()
    sparse = EMA(params, decay=0.5, every=every)
    dense = EMA(reference_params, decay=0.5)
    for step in range(4 * every):
        if step % every == 0:  # the weights move, then stay for `every` steps
            for a, b in zip(params, reference_params, strict=True):
                with torch.no_grad():
                    a.add_(0.1 * (step + 1))
                    b.add_(0.1 * (step + 1))
        moved = [s.clone() for s in sparse.shadow]
        sparse.update()
        dense.update()
        if (step + 1) % every:  # between moves the shadows wait
            assert all(torch.equal(a, b) for a, b in zip(moved, sparse.shadow, strict=True))
    for a, b in zip(sparse.shadow, dense.shadow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert sparse.current_decay() == pytest.approx(0.5**every)  # warmed up (n >= 8)


@pytest.mark.parametrize("cross_device", [False, True])
def test_ema_update_is_one_multi_tensor_lerp_on_one_device_and_per_tensor_across(
    cross_device, monkeypatch
):
    """Both ways move every shadow exactly as one lerp_ per parameter does; shadows on another
    device than the weights (ema_device="cpu" while training on a GPU) move one parameter at a
    time, never building every fp32 copy at once."""
    import train.ema as ema_module

    if cross_device:  # no second device here: the EMA is told the devices differ
        monkeypatch.setattr(ema_module, "_same_device", lambda shadow, param: False)
    foreach_calls = []
    foreach = torch._foreach_lerp_
    monkeypatch.setattr(
        torch, "_foreach_lerp_", lambda *a, **k: foreach_calls.append(1) or foreach(*a, **k)
    )
    params = _params()
    ema = EMA(params, decay=0.9)
    expected = [s.clone() for s in ema.shadow]
    for step in range(5):
        with torch.no_grad():
            for i, p in enumerate(params):
                p.add_(torch.randn_like(p) * (step + i + 1))
        weight = 1.0 - ema.current_decay()
        for shadow, p in zip(expected, params, strict=True):
            shadow.lerp_(p.detach().float(), weight)
        ema.update()
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow, expected, strict=True))
    assert len(foreach_calls) == (0 if cross_device else 5)


def test_ema_on_the_cpu_keeps_shadows_and_swapped_weights_there():
    params = _params()
    ema = EMA(params, decay=0.9, device="cpu")
    assert all(s.device.type == "cpu" and s.dtype == torch.float32 for s in ema.shadow)
    with torch.no_grad():
        params[0].add_(1.0)
    ema.update()
    trained = [p.detach().clone() for p in params]
    ema.swap_in()
    assert all(b.device.type == "cpu" for b in ema._backup)
    assert torch.equal(params[0], ema.shadow[0])
    ema.swap_out()
    assert all(torch.equal(a, b) for a, b in zip(params, trained, strict=True))


# -- exact resume ------------------------------------------------------------------------------

# 4 optimiser steps, a checkpoint after step 2; the EMA moves every 3 steps, so the resumed run
# starts between two moves.
RUN = {"max_steps": 4, "checkpoint_every": 2, "validate_every": 0}
SAVERS = {
    "adamw8bit": {"optimizer": "adamw8bit", "ema_device": "cpu"},
    "adafactor": {"optimizer": "adafactor", "lr": 1e-2, "ema_every": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize("saver", list(SAVERS))
def test_resume_with_a_memory_saver_ends_with_identical_weights(tmp_path, data, monkeypatch, saver):
    options = {**RUN, **SAVERS[saver]}
    full = tmp_path / "full"
    train(tiny_config(full, data, train=options))
    part = tmp_path / "part"
    config = tiny_config(part, data, train=options)
    kill_in_micro_batch(monkeypatch, config, 3, "step-00000002")
    assert train(config, resume=True)["step"] == 4
    last = "checkpoints/step-00000004"
    assert_same_weights(checkpoint_weights(part, 4), checkpoint_weights(full, 4))
    states = [torch.load(out / last / "optimizer.pt", weights_only=True) for out in (part, full)]
    flat = [state_tensors(s["state"]) for s in states]
    assert len(flat[0]) == len(flat[1]) > 0
    assert all(torch.equal(x, y) for x, y in zip(*flat, strict=True))
