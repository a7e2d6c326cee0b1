"""LoRA training (train.method = "lora"): only the adapters learn, the LoRA file, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_support import tiny_config

from exemplar_core.lora import mapper_target_modules, unet_key, unet_target_modules
from train.config import ConfigError
from train.lora import lora_layers
from train.model_init import build_model
from train.trainer import ResumeError, Trainer, train

pytestmark = pytest.mark.slow

LORA = {"rank": 4, "alpha": 8.0}
RUN = {"method": "lora", "max_steps": 4, "grad_accum": 2, "checkpoint_every": 2}
STEP4 = ("checkpoints", "step-00000004")


def _config(out, data, train=None, lora=None, **sections):
    return tiny_config(
        out, data, train={**RUN, **(train or {})}, lora={**LORA, **(lora or {})}, **sections
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    """A 4-step LoRA run (validation images at the end, through the adapted model)."""
    out = tmp_path_factory.mktemp("lora")
    trainer = Trainer(_config(out, data, train={"validate_every": 4}))
    summary = trainer.run()
    return out, trainer, summary


def _plain(state: dict) -> dict:
    """A peft-adapted module's base weights under the plain module's key names."""
    return {
        k.replace(".base_layer.", "."): v
        for k, v in state.items()
        if ".lora_A." not in k and ".lora_B." not in k
    }


def test_a_lora_run_trains_only_the_adapters_and_the_exemplar_head(uninterrupted):
    out, trainer, summary = uninterrupted
    assert summary["step"] == 4 and summary["ranks_in_sync"]
    start = build_model(trainer.config.model, trainer.config.train.seed)
    trained_unet = _plain(trainer.model.unet.state_dict())
    for key, value in start.unet.state_dict().items():
        assert torch.equal(trained_unet[key], value), key  # the base UNet is bit-identical
    trained_encoder = _plain(trainer.model.encoder.state_dict())
    changed = {
        k for k, v in start.encoder.state_dict().items() if not torch.equal(trained_encoder[k], v)
    }
    assert changed and all(
        k.split(".")[0] in ("final_ln", "proj_out", "learnable_vector") for k in changed
    )
    ups = [p for n, p in trainer.model.named_parameters() if ".lora_B." in n]
    assert len(ups) == len(unet_target_modules(start.unet, ["attention"])) + len(
        mapper_target_modules(start.encoder)
    )
    assert all(p.abs().sum() > 0 for p in ups)  # every adapter learnt (B starts at zero)
    assert (out / "validation" / "step-00000004.png").is_file()


def test_the_exported_lora_file_has_kohya_unet_keys_exemplar_entries_and_metadata(uninterrupted):
    out, trainer, _ = uninterrupted
    path = out / "models" / "pbe-lora-final.safetensors"
    assert (out / "models" / "pbe-lora-step-00000002.safetensors").is_file()
    assert not (out / "models" / "pbe-final.safetensors").exists()  # lora.export_merged is off
    tensors = load_file(str(path))
    start = build_model(trainer.config.model, trainer.config.train.seed)
    stems = [unet_key(p) for p in unet_target_modules(start.unet, ["attention"])]
    unet_keys = {
        f"{s}.{part}" for s in stems for part in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert {k for k in tensors if k.startswith("lora_unet_")} == unet_keys
    mapper = {f"pbe_exemplar.{p}.lora_down.weight" for p in mapper_target_modules(start.encoder)}
    head = {
        "pbe_exemplar.final_ln.diff",
        "pbe_exemplar.final_ln.diff_b",
        "pbe_exemplar.proj_out.diff",
        "pbe_exemplar.proj_out.diff_b",
        "pbe_exemplar.learnable_vector.diff",
    }
    assert mapper | head <= set(tensors)
    down = tensors[f"{stems[0]}.lora_down.weight"]
    assert down.dtype == torch.float16 and down.shape[0] == 4  # lora.export_dtype, rank
    assert float(tensors[f"{stems[0]}.alpha"]) == 8.0
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "paint-by-example-lora"
    assert (meta["rank"], meta["ss_network_dim"], float(meta["alpha"])) == ("4", "4", 8.0)
    assert json.loads(meta["unet_modules"]) == ["attention"] and meta["exemplar"] == "lora"
    assert meta["base_model"] == "random:tiny" and meta["training_step"] == "4"
    assert json.loads(meta["training_config"])["lora"]["rank"] == 4
    assert set(json.loads(meta["architecture"])) == {"unet", "encoder"}
    assert meta["ss_network_module"] == "networks.lora"


def test_the_lora_file_holds_the_ema_of_the_adapters(uninterrupted):
    out, trainer, _ = uninterrupted
    ema = load_file(str(out.joinpath(*STEP4, "ema.safetensors")))
    trained = load_file(str(out.joinpath(*STEP4, "trainable.safetensors")))
    assert {k for k in ema if k.startswith("shadow.")} == {f"shadow.{k}" for k in trained}
    assert all(".lora_" in k or k.startswith("encoder.") for k in trained)
    tensors = load_file(str(out / "models" / "pbe-lora-final.safetensors"))
    path = next(iter(lora_layers(trainer.model.unet)))
    name = f"unet.{path}.lora_B.default.weight"
    up = tensors[f"{unet_key(path)}.lora_up.weight"].float()
    torch.testing.assert_close(up, ema[f"shadow.{name}"], atol=1e-5, rtol=2e-3)  # fp16 file
    assert not torch.allclose(up, trained[name], atol=1e-5, rtol=2e-3)


def test_a_stopped_and_resumed_lora_run_ends_bit_identical(
    tmp_path, data, uninterrupted, monkeypatch
):
    out, _, _ = uninterrupted
    config = _config(tmp_path, data)
    real_step = Trainer.training_step
    calls = {"n": 0}

    def crash_in_step_three(self, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "training_step", crash_in_step_three)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(Trainer, "training_step", real_step)
    assert train(config, resume=True)["step"] == 4
    for name in ("trainable.safetensors", "ema.safetensors"):
        resumed, full = (load_file(str(o.joinpath(*STEP4, name))) for o in (tmp_path, out))
        assert resumed.keys() == full.keys()
        assert all(torch.equal(resumed[k], full[k]) for k in full), name
    a, b = (load_file(str(o / "models" / "pbe-lora-final.safetensors")) for o in (tmp_path, out))
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize(
    ("train_options", "lora_options", "message"),
    [
        ({}, {"rank": 8}, r"lora\.rank = 4 there, 8 here"),
        ({}, {"unet_modules": ["attention", "conv"]}, r"lora\.unet_modules"),
        ({"method": "full"}, {}, r"train\.method = 'lora' but this run uses 'full'"),
    ],
)
def test_resuming_with_another_lora_layout_fails_clearly(
    tmp_path, data, train_options, lora_options, message
):
    first = {"max_steps": 1, "checkpoint_every": 1, "grad_accum": 1}
    train(_config(tmp_path, data, train=first))
    changed = _config(
        tmp_path, data, train={**first, "max_steps": 2, **train_options}, lora=lora_options
    )
    with pytest.raises(ResumeError, match=message):
        train(changed, resume=True)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ({"rank": 0}, r"lora\.rank must be >= 1"),
        ({"alpha": 0}, r"lora\.alpha must be > 0"),
        ({"dropout": 1.0}, r"lora\.dropout must be in \[0, 1\)"),
        ({"unet_modules": ["attn"]}, r"unknown group\(s\) \['attn'\]; choose from"),
        ({"unet_modules": [], "exemplar": "frozen"}, r"nothing would be trained"),
        ({"exemplar": "mapper"}, r"lora\.exemplar = 'mapper' is not one of"),
    ],
)
def test_lora_config_errors_say_what_is_expected(tmp_path, data, lora, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, data, lora=lora)
