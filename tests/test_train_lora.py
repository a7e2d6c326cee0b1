"""LoRA training (train.method = "lora"): only the adapters learn, the LoRA file, exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_support import (
    assert_same_weights,
    checkpoint_weights,
    kill_in_micro_batch,
    make_images,
    tiny_config,
    write_jsonl,
)

from exemplar_core.lora import mapper_target_modules, unet_key, unet_target_modules
from train.lora import lora_layers
from train.model_init import build_model
from train.trainer import Denoiser, ResumeError, Trainer, train

pytestmark = pytest.mark.slow

LORA = {"rank": 4, "alpha": 8.0}
RUN = {"method": "lora", "max_steps": 4, "grad_accum": 2, "checkpoint_every": 2}
STEP4 = ("checkpoints", "step-00000004")
DROPOUT = {"dropout": 0.1}  # drawn from the global CPU generator: resume must restore it exactly


def _config(out, data, train=None, lora=None, **sections):
    return tiny_config(
        out, data, train={**RUN, **(train or {})}, lora={**LORA, **(lora or {})}, **sections
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    """A 4-step LoRA run with dropout (validation images at the end, through the adapted model)."""
    out = tmp_path_factory.mktemp("lora")
    trainer = Trainer(_config(out, data, train={"validate_every": 4}, lora=DROPOUT))
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
    config = _config(tmp_path, data, lora=DROPOUT)
    # micro-batch 6 = the second half of optimiser step 3
    kill_in_micro_batch(monkeypatch, config, 6, "step-00000002")
    assert train(config, resume=True)["step"] == 4
    assert_same_weights(checkpoint_weights(tmp_path, 4), checkpoint_weights(out, 4))
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


def test_a_checkpoint_saved_before_train_method_existed_resumes_as_full_fine_tuning():
    run = SimpleNamespace(
        config=SimpleNamespace(method="full"), accelerator=SimpleNamespace(is_main_process=True)
    )
    saved = {"train": {"lr": 1e-5}, "subject": {"enabled": True}}  # no train.method
    Trainer._check_resume_method(run, Path("step-00000002"), saved)  # accepted as full
    run.config.method = "lora"
    with pytest.raises(ResumeError, match=r"train\.method = 'full' but this run uses 'lora'"):
        Trainer._check_resume_method(run, Path("step-00000002"), saved)


def test_seeding_the_adapters_leaves_the_cuda_generators_alone(tmp_path, data, monkeypatch):
    config = _config(tmp_path, data)
    run = SimpleNamespace(config=config, model=build_model(config.model, config.train.seed))
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    cpu_state = torch.get_rng_state()
    assert Trainer._inject_lora(run)  # adapters made, seeded
    assert reseeded == []  # fork_rng(devices=[]) would not restore them
    assert torch.equal(torch.get_rng_state(), cpu_state)


ALL_GROUPS = ["attention", "feed_forward", "projections", "conv", "conv_in"]


def _set_up(out, data, **options):
    trainer = Trainer(_config(out, data, **options))
    trainer.setup()
    trainer._close_logs()
    with torch.no_grad():  # B starts at zero, which gives A no gradient: make it count
        for name, p in trainer.model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.05)
    return trainer


def _denoiser_inputs(trainer, size: int = 2):
    torch.manual_seed(0)
    width = trainer.model.encoder.config.width
    return (
        torch.randn(size, 4, 8, 8),
        torch.tensor([10, 900])[:size],
        torch.randn(size, 4, 8, 8),
        torch.rand(size, 1, 8, 8),
        torch.randn(size, width),
        torch.tensor([True, False])[:size],  # one sample dropped: the learned vector learns too
    )


@pytest.mark.parametrize("exemplar", ["lora", "full", "frozen"])
def test_every_trained_parameter_gets_a_gradient_with_gradient_checkpointing(
    tmp_path, data, exemplar
):
    trainer = _set_up(
        tmp_path,
        data,
        train={"gradient_checkpointing": True},
        lora={"unet_modules": ALL_GROUPS, "exemplar": exemplar},
    )
    assert trainer.model.unet.is_gradient_checkpointing
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    trained = {names[id(p)] for p in trainer.params}
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == trained
    layers = lora_layers(trainer.model.unet)
    for group in ALL_GROUPS:
        wanted = unet_target_modules(build_model(trainer.config.model, 0).unet, [group])
        assert wanted and set(wanted) <= set(layers), group
    trainer.denoiser(*_denoiser_inputs(trainer)).square().mean().backward()
    no_grad = [names[id(p)] for p in trainer.params if p.grad is None or not p.grad.any()]
    assert not no_grad
    if exemplar == "frozen":
        assert all(n.startswith("unet.") for n in trained)
    if exemplar == "full":
        assert any(n.startswith("encoder.mapper.") and ".lora_" not in n for n in trained)


def test_the_merged_model_computes_what_the_adapted_model_computes(tmp_path, data):
    from train.lora import merged_model

    trainer = _set_up(tmp_path, data, lora={"unet_modules": ALL_GROUPS})
    with torch.no_grad():
        trainer.model.encoder.proj_out.bias.add_(0.1)  # a whole-trained part that moved
        trainer.model.eval()
        adapted = trainer.denoiser(*_denoiser_inputs(trainer))
        merged = merged_model(trainer.model)
        plain = Denoiser(merged)(*_denoiser_inputs(trainer))
    assert not any(".lora_" in k or ".base_layer." in k for k in merged.state_dict())
    torch.testing.assert_close(plain, adapted, atol=1e-5, rtol=1e-5)
    base = build_model(trainer.config.model, trainer.config.train.seed)
    with torch.no_grad():
        before = Denoiser(base.eval())(*_denoiser_inputs(trainer))
    assert not torch.allclose(before, adapted, atol=1e-3)  # the adapters do change the output


def test_a_bf16_lora_run_with_checkpointing_exports_the_merged_model_too(tmp_path, data):
    from exemplar_core.checkpoint import load_model

    options = {"mixed_precision": "bf16", "gradient_checkpointing": True, "grad_accum": 1}
    config = _config(tmp_path, data, train=options, lora={"export_merged": True, "dropout": 0.1})
    summary = train(config)
    assert summary["step"] == 4
    state = load_file(str(tmp_path.joinpath(*STEP4, "trainable.safetensors")))
    assert all(torch.isfinite(v).all() for v in state.values())
    assert (tmp_path / "models" / "pbe-lora-step-00000002.safetensors").is_file()
    assert (tmp_path / "models" / "pbe-step-00000002.safetensors").is_file()
    merged = load_model(tmp_path / "models" / "pbe-final.safetensors")
    lora = load_file(str(tmp_path / "models" / "pbe-lora-final.safetensors"))
    base = build_model(config.model, config.train.seed)
    diff = lora["pbe_exemplar.proj_out.diff"]
    torch.testing.assert_close(merged.encoder.proj_out.weight, base.encoder.proj_out.weight + diff)


def test_a_two_process_lora_run_ends_with_the_ranks_in_sync(tmp_path):
    from test_train_ddp import _launch

    data = write_jsonl(tmp_path / "ann.jsonl", make_images(tmp_path, 9))
    options = {"max_steps": 2, "grad_accum": 1, "validate_every": 0}
    summary = _launch(tmp_path, _config(tmp_path / "run", data, train=options))
    assert summary["world_size"] == 2 and summary["step"] == 2 and summary["ranks_in_sync"]
    first, second = summary["rank_checksums"]
    assert first == second  # the adapters are bit-identical on both ranks
    assert first[1] > 0  # and they are what was summed (the B weights moved off zero)
    assert (tmp_path / "run" / "models" / "pbe-lora-final.safetensors").is_file()


def test_subject_mode_trains_a_lora_by_default_and_everything_with_method_full(tmp_path):
    from train.config import config_from_dict

    subject = write_jsonl(tmp_path / "subject.jsonl", make_images(tmp_path, 3, seed=5))
    for method, written in (("auto", "pbe-lora-final"), ("full", "pbe-final")):
        base = tiny_config(tmp_path / method, subject, train={"max_steps": 1, "method": method})
        data = base.to_dict()
        data["subject"].update(enabled=True, path=str(subject), repeats=2, num_prior=0)
        config = config_from_dict(data)
        train(config)
        assert [p.stem for p in (tmp_path / method / "models").iterdir()] == [written]


@pytest.mark.parametrize("exemplar", ["lora", "full"])
def test_the_exported_file_applied_to_the_base_model_computes_what_the_trainer_computed(
    tmp_path, data, exemplar
):
    from exemplar_core.lora import apply_lora, read_lora

    lora = {"unet_modules": ALL_GROUPS, "exemplar": exemplar, "export_dtype": "fp32"}
    trainer = _set_up(tmp_path, data, train={"ema": False}, lora=lora)
    with torch.no_grad():  # the whole-trained parts moved too
        for p in trainer.params:
            if ".lora_" not in next(n for n, q in trainer.model.named_parameters() if q is p):
                p.add_(0.05 * torch.randn_like(p))
    trainer.model.eval()
    (path,) = trainer.export("final")
    base = build_model(trainer.config.model, trainer.config.train.seed).eval()
    apply_lora(base, read_lora(path), strength=1.0)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            Denoiser(base)(*_denoiser_inputs(trainer)),
            trainer.denoiser(*_denoiser_inputs(trainer)),
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(
            base.encoder(pixels), trainer.model.encoder(pixels), atol=1e-5, rtol=1e-5
        )
        untouched = build_model(trainer.config.model, trainer.config.train.seed).eval()
        assert not torch.allclose(untouched.encoder(pixels), base.encoder(pixels), atol=1e-3)
