"""End-to-end runs of the tiny trainer on CPU: overfitting, exact resume, export, NaN, logs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_support import kill_in_micro_batch, tiny_config

import train.trainer as trainer
from train.trainer import Trainer, TrainingError, train

pytestmark = pytest.mark.slow


# 4 optimiser steps of 2 micro-batches each, a checkpoint every 2 steps, validation at step 4.
RUN = {"max_steps": 4, "grad_accum": 2, "checkpoint_every": 2, "validate_every": 4}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("full")
    summary = train(tiny_config(out, data, train=RUN))
    return out, summary


def _final_state(out):
    return load_file(str(out / "checkpoints" / "step-00000004" / "trainable.safetensors"))


def test_loss_falls_when_overfitting_a_fixed_batch(tmp_path, data):
    t = Trainer(tiny_config(tmp_path, data, train={"lr": 2e-3}))
    t.setup()
    batch = next(t._batches())
    losses = []
    for _ in range(12):
        t.generators["noise"].manual_seed(0)  # same noise and timesteps: a fixed target
        loss = t.training_step(batch)
        t.accelerator.backward(loss)
        t.optimizer.step()
        t.optimizer.zero_grad()
        losses.append(loss.item())
    t._close_logs()
    assert losses[-1] < 0.3 * losses[0], losses


def test_run_writes_checkpoints_models_validation_and_logs(uninterrupted):
    out, summary = uninterrupted
    assert summary["step"] == 4 and summary["ranks_in_sync"]
    assert summary["samples"] == 4 * 2 * 2  # steps x accumulation x batch
    assert (out / "checkpoints" / "latest").read_text() == "step-00000004"
    assert (out / "models" / "pbe-step-00000002.safetensors").is_file()
    assert (out / "models" / "pbe-final.safetensors").is_file()
    from PIL import Image

    grid = Image.open(out / "validation" / "step-00000004.png")
    assert grid.size == (4 * 64, 1 * 64)  # source | masked | exemplar | edit, one held-out pair
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_second"} <= scalars
    assert "validation" in events.Tags()["images"]
    assert len(events.Scalars("train/loss")) == 4


def test_exported_model_round_trips_into_the_editor_with_ema_weights(uninterrupted):
    from exemplar_core.checkpoint import load_model
    from exemplar_core.editor import Editor, EditSettings

    out, _ = uninterrupted
    model = load_model(out / "models" / "pbe-final.safetensors")
    ema = load_file(str(out / "checkpoints" / "step-00000004" / "ema.safetensors"))
    trained = _final_state(out)
    params = dict(model.named_parameters())
    for name in trained:
        torch.testing.assert_close(params[name].float(), ema[f"shadow.{name}"])
    name = "unet.conv_in.weight"
    assert not torch.equal(params[name].float(), trained[name])  # the EMA, not the raw weights
    source = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    settings = EditSettings(steps=2, size=64, whole_image=True)
    result = Editor(model, device="cpu", progress=False).edit(
        source, mask, torch.rand(1, 3, 40, 40), settings
    )
    assert result.image.shape == (1, 3, 64, 64) and torch.isfinite(result.image).all()


def test_resume_after_a_crash_ends_with_identical_weights(
    tmp_path, data, uninterrupted, monkeypatch
):
    out, _ = uninterrupted
    config = tiny_config(tmp_path, data, train=RUN)
    # micro-batch 6 = the second half of optimiser step 3
    kill_in_micro_batch(monkeypatch, config, 6, "step-00000002")
    assert not (tmp_path / "checkpoints" / "step-00000004").exists()
    summary = train(config, resume=True)
    assert summary["step"] == 4 and summary["samples"] == 16
    resumed, full = _final_state(tmp_path), _final_state(out)
    assert resumed.keys() == full.keys()
    for key in full:
        assert torch.equal(resumed[key], full[key]), key
    ema_a = load_file(str(tmp_path / "checkpoints" / "step-00000004" / "ema.safetensors"))
    ema_b = load_file(str(out / "checkpoints" / "step-00000004" / "ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_b)
    opt_a = torch.load(tmp_path / "checkpoints" / "step-00000004" / "optimizer.pt")
    opt_b = torch.load(out / "checkpoints" / "step-00000004" / "optimizer.pt")
    assert all(
        torch.equal(opt_a["state"][i]["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"])
        for i in opt_b["state"]
    )


def test_lr_decay_follows_the_config_also_when_a_resumed_run_is_longer(tmp_path, data):
    """A run of 2 constant steps, resumed to 6 steps with a linear decay over the last 4: the
    resumed run follows the new config's schedule (the checkpoint carries no schedule)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = {"max_steps": 2, "checkpoint_every": 2, "lr": 1e-3}
    train(tiny_config(tmp_path, data, train=first))
    longer = {**first, "max_steps": 6, "lr_decay": "linear", "lr_decay_steps": 4, "lr_end": 0.25}
    summary = train(tiny_config(tmp_path, data, train=longer), resume=True)
    assert summary["step"] == 6
    events = EventAccumulator(str(tmp_path / "logs")).Reload()
    logged = {event.step: event.value for event in events.Scalars("train/lr")}
    # the lr logged at step k is the one the next update uses: 1e-3 x (0.25 + 0.75 (6 - k) / 4)
    expected = {k: 1e-3 * (0.25 + 0.75 * (6 - k) / 4) for k in range(2, 7)}
    expected[1] = 1e-3
    assert logged.keys() == expected.keys()
    for step, value in expected.items():
        assert logged[step] == pytest.approx(value, rel=1e-5), step


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, data, monkeypatch):
    config = tiny_config(tmp_path, data, train={"max_steps": 4, "checkpoint_every": 2})
    real_loss = trainer.diffusion_loss
    calls = {"n": 0}

    def nan_at_step_three(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer, "diffusion_loss", nan_at_step_three)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*step-00000002"):
        train(config)
    latest = tmp_path / "checkpoints" / "step-00000002"
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-00000002"
    state = load_file(str(latest / "trainable.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    assert json.loads((latest / "state.json").read_text())["step"] == 2


def test_deferred_nan_check_names_the_first_bad_step_and_saves_no_touched_weights(
    tmp_path, data, monkeypatch
):
    """On an accelerator the loss is read only at log steps and before checkpoints (no host sync
    per step); the run must still stop naming the first bad step, and never checkpoint weights
    that the bad step updated. Forced on here (CPU) by switching the deferred mode on."""
    options = {"max_steps": 5, "checkpoint_every": 2, "log_every": 100}  # read at the checkpoint
    config = tiny_config(tmp_path, data, train=options)
    real_loss, real_setup = trainer.diffusion_loss, Trainer.setup
    calls = {"n": 0}

    def nan_at_step_three(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    def deferred_setup(self):
        real_setup(self)
        self.defer_sync = True

    monkeypatch.setattr(trainer, "diffusion_loss", nan_at_step_three)
    monkeypatch.setattr(Trainer, "setup", deferred_setup)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*step-00000002"):
        train(config)
    assert calls["n"] == 4  # found before step 4's checkpoint, not at the end of the run
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-00000002"
    assert not (tmp_path / "checkpoints" / "step-00000004").exists()


def test_noise_offset_and_masked_loss_weight_reach_the_loss(tmp_path, data, monkeypatch):
    seen = []
    real_loss = trainer.diffusion_loss

    def spy(pred, target, *args, **kwargs):
        seen.append((target.detach().clone(), args[-1] if len(args) > 5 else None))
        return real_loss(pred, target, *args, **kwargs)

    monkeypatch.setattr(trainer, "diffusion_loss", spy)
    for offset, weight in ((0.0, 1.0), (2.0, 10.0)):
        options = {"max_steps": 1, "noise_offset": offset, "masked_loss_weight": weight}
        train(tiny_config(tmp_path / f"o{offset}", data, train=options))
    (plain_noise, plain_weights), (offset_noise, weights) = seen
    # the offset is one constant per sample and channel: the spatial means spread out
    assert offset_noise.mean(dim=(2, 3)).std() > 4 * plain_noise.mean(dim=(2, 3)).std()
    assert plain_weights is None
    assert weights.min() >= 1.0 and weights.max() == pytest.approx(10.0)
    assert weights.shape[1] == 1 and (weights > 1).any() and (weights == 1).any()


def test_fine_tuning_starts_from_an_exported_model(tmp_path, data, uninterrupted):
    from exemplar_core.checkpoint import load_model

    out, _ = uninterrupted
    start = out / "models" / "pbe-final.safetensors"
    config = tiny_config(
        tmp_path,
        data,
        model={"init": "pbe", "path": str(start)},
        train={"max_steps": 1, "ema": False},
    )
    t = Trainer(config)
    t.setup()
    reference = load_model(start)
    torch.testing.assert_close(t.model.unet.conv_in.weight, reference.unet.conv_in.weight)
    t._close_logs()


def test_bf16_checkpointing_min_snr_and_per_batch_dropout_train(tmp_path, data):
    config = tiny_config(
        tmp_path,
        data,
        train={
            "max_steps": 2,
            "mixed_precision": "bf16",
            "gradient_checkpointing": True,
            "min_snr_gamma": 5.0,
            "cond_dropout_mode": "per_batch",
            "max_grad_norm": 1.0,
        },
    )
    summary = train(config)
    state = load_file(str(tmp_path / "checkpoints" / "step-00000002" / "trainable.safetensors"))
    assert summary["step"] == 2
    assert all(torch.isfinite(v).all() for v in state.values())
