"""Start points (SD, SD-inpainting, PbE), the loss, condition dropout and the trained set."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hostile import RunsCode, write_huge_header

from exemplar_core.checkpoint import CheckpointError, keymap, load_checkpoint
from exemplar_core.model import ModelConfigs, build_unet, build_vae
from train.config import ModelSection
from train.model_init import build_model, convert_inpaint_conv_in, expand_sd_conv_in
from train.trainer import (
    Denoiser,
    diffusion_loss,
    draw_dropout,
    draw_timesteps,
    freeze_for_training,
    min_snr_weights,
    timestep_weights,
    trainable_parameters,
)

TINY = ModelConfigs.tiny()


def _encoder_fields() -> dict:
    fields = TINY.encoder.to_dict()
    fields.pop("out_dim")
    return fields


def _write_sd(tmp_path, in_channels: int, single_file: bool):
    """A tiny SD (or SD-inpainting) checkpoint plus an open_clip-format tower file."""
    from safetensors.torch import save_file

    from exemplar_core.encoder import ExemplarEncoder

    torch.manual_seed(0)
    unet_cfg = dict(TINY.unet, in_channels=in_channels)
    unet, vae = build_unet(unet_cfg), build_vae(TINY.vae)
    if single_file:
        state = {
            f"model.diffusion_model.{k}": v
            for k, v in keymap.unet_diffusers_to_ldm(unet.state_dict(), unet_cfg).items()
        }
        state.update(
            {
                f"first_stage_model.{k}": v
                for k, v in keymap.vae_diffusers_to_ldm(vae.state_dict(), TINY.vae).items()
            }
        )
        path = tmp_path / "sd.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "sd"
        unet.save_pretrained(path / "unet")
        vae.save_pretrained(path / "vae")
    tower = ExemplarEncoder(TINY.encoder).tower
    clip = tmp_path / "clip.safetensors"
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(clip))
    return path, clip, unet, vae, tower


def _section(path, clip, init: str) -> ModelSection:
    # A single file does not record the head count: give the tiny UNet's.
    unet = {"attention_head_dim": TINY.unet["attention_head_dim"]}
    return ModelSection(
        init=init, path=str(path), clip=str(clip), encoder=_encoder_fields(), unet=unet
    )


def _pickle_running_code(tmp_path):
    path = tmp_path / "sd.ckpt"
    state = {"model.diffusion_model.out.2.weight": torch.zeros(1)}
    torch.save({"state_dict": state, "x": RunsCode(tmp_path / "ran")}, path)
    return path


def _header_claiming_gigabytes(tmp_path):
    return write_huge_header(tmp_path / "sd.safetensors")


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (_pickle_running_code, "pickled Python objects besides weights"),
        (_header_claiming_gigabytes, "8,000,000,000-byte header"),
    ],
)
def test_an_unsafe_start_point_is_refused_as_the_loader_refuses_it(tmp_path, write, expected):
    path = write(tmp_path)
    with pytest.raises(CheckpointError) as by_loader:
        load_checkpoint(path)
    for init in ("sd", "sd_inpaint"):
        with pytest.raises(CheckpointError) as by_trainer:
            build_model(_section(path, path, init), seed=0)
        assert str(by_trainer.value) == str(by_loader.value)
    assert expected in str(by_loader.value)
    assert not (tmp_path / "ran").exists(), "no pickled code ran"


def _unet_inputs(batch: int = 2):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    masked = torch.randn(batch, 4, 8, 8, generator=g)
    keep = (torch.rand(batch, 1, 8, 8, generator=g) > 0.5).float()
    context = torch.randn(batch, 1, 32, generator=g)
    return x, masked, keep, context, torch.tensor([10, 500])


def test_sd_start_adds_five_zero_channels_so_the_unet_still_acts_as_sd(tmp_path):
    for single_file in (False, True):
        path, clip, sd_unet, sd_vae, tower = _write_sd(tmp_path, 4, single_file)
        model = build_model(_section(path, clip, "sd"), seed=0)
        weight = model.unet.conv_in.weight
        assert weight.shape[1] == 9 and weight[:, 4:].abs().sum() == 0
        x, masked, keep, context, t = _unet_inputs()
        with torch.no_grad():
            ours = model.unet(torch.cat([x, masked, keep], 1), t, context).sample
            theirs = sd_unet(x, t, context).sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        # VAE and tower weights were loaded, not left random.
        assert torch.equal(model.vae.decoder.conv_out.weight, sd_vae.decoder.conv_out.weight)
        assert torch.equal(model.encoder.tower.conv1.weight, tower.conv1.weight)


def test_inpaint_conv_in_reorder_and_polarity_fold_is_exact_inside_the_border():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 9, 3, 3, generator=g)
    bias = torch.randn(8, generator=g)
    x = torch.randn(2, 4, 10, 10, generator=g)
    masked = torch.randn(2, 4, 10, 10, generator=g)
    edit = (torch.rand(2, 1, 10, 10, generator=g) > 0.5).float()
    sd_out = F.conv2d(torch.cat([x, edit, masked], 1), weight, bias, padding=1)
    new_w, new_b = convert_inpaint_conv_in(weight, bias)
    pbe_out = F.conv2d(torch.cat([x, masked, 1 - edit], 1), new_w, new_b, padding=1)
    torch.testing.assert_close(pbe_out[..., 1:-1, 1:-1], sd_out[..., 1:-1, 1:-1])
    # On the border ring the zero padding makes the folded constant differ; bounded by the
    # out-of-image taps of the mask weights.
    border = (pbe_out - sd_out).abs().amax()
    assert border <= weight[:, 4].abs().sum(dim=(1, 2)).max() + 1e-5


def test_sd_inpaint_start_loads_and_reorders_conv_in(tmp_path):
    path, clip, sd_unet, _, _ = _write_sd(tmp_path, 9, single_file=False)
    model = build_model(_section(path, clip, "sd_inpaint"), seed=0)
    sd_w = sd_unet.conv_in.weight
    ours = model.unet.conv_in.weight
    torch.testing.assert_close(ours[:, :4], sd_w[:, :4])
    torch.testing.assert_close(ours[:, 4:8], sd_w[:, 5:9])
    torch.testing.assert_close(ours[:, 8], -sd_w[:, 4])
    torch.testing.assert_close(
        model.unet.conv_in.bias, sd_unet.conv_in.bias + sd_w[:, 4].sum(dim=(1, 2))
    )


def test_sd_start_refuses_an_inpainting_unet(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="sd_inpaint"):
        expand_sd_conv_in(torch.zeros(4, 9, 3, 3))


def test_only_unet_and_encoder_head_are_trained():
    model = build_model(ModelSection(init="random", architecture="tiny"), seed=0)
    freeze_for_training(model)
    trained = {id(p) for p in trainable_parameters(model)}
    assert all(id(p) in trained for p in model.unet.parameters())
    assert id(model.encoder.learnable_vector) in trained
    assert all(id(p) in trained for p in model.encoder.mapper.parameters())
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert not any(p.requires_grad for p in model.encoder.tower.parameters())
    assert not model.vae.training and not model.encoder.tower.training
    assert model.unet.training


def test_dropped_samples_get_the_learned_vector():
    model = build_model(ModelSection(init="random", architecture="tiny"), seed=0)
    denoiser = Denoiser(model).eval()
    x, masked, keep, _, t = _unet_inputs()
    pooled = torch.randn(2, TINY.encoder.width)
    with torch.no_grad():
        out = denoiser(x, t, masked, keep, pooled, torch.tensor([True, False]))
        vector = model.encoder.unconditional(2)
        cond = model.encoder.project(pooled)
        unet_in = torch.cat([x, masked, keep], 1)
        expect_drop = model.unet(unet_in, t, vector).sample
        expect_keep = model.unet(unet_in, t, cond).sample
    torch.testing.assert_close(out[0], expect_drop[0])
    torch.testing.assert_close(out[1], expect_keep[1])


def test_dropout_rates_per_sample_and_per_batch():
    g, shared = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    cpu = torch.device("cpu")
    per_sample = torch.stack(
        [draw_dropout(8, 0.2, "per_sample", g, shared, cpu) for _ in range(500)]
    )
    assert abs(per_sample.float().mean().item() - 0.2) < 0.02
    mixed = (per_sample.any(1) & ~per_sample.all(1)).float().mean()
    assert mixed > 0.5  # batches mix dropped and kept samples
    per_batch = torch.stack(
        [draw_dropout(8, 0.2, "per_batch", g, shared, cpu) for _ in range(1000)]
    )
    assert bool(((per_batch.all(1)) | (~per_batch.any(1))).all())  # all or none
    assert abs(per_batch.all(1).float().mean().item() - 0.2) < 0.04


def test_loss_is_eps_mse_with_optional_min_snr_and_prior_term():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([5, 100, 500, 900])
    from diffusers import DDPMScheduler

    from exemplar_core.config import SCHEDULE

    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod
    per = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(diffusion_loss(pred, target, t, alphas, 0.0), per.mean())
    w = min_snr_weights(t, alphas, 5.0)
    assert w[0] < 1.0 and w[-1] == 1.0  # low-noise steps are down-weighted
    torch.testing.assert_close(diffusion_loss(pred, target, t, alphas, 5.0), (per * w).mean())
    prior = diffusion_loss(pred, target, t, alphas, 0.0, prior_split=2, prior_weight=0.5)
    torch.testing.assert_close(prior, per[:2].mean() + 0.5 * per[2:].mean())


def test_position_weights_make_the_loss_a_weighted_mean_over_each_latent():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    t = torch.tensor([10, 800])
    alphas = torch.linspace(0.99, 0.01, 1000)
    plain = diffusion_loss(pred, target, t, alphas, 0.0)
    ones = torch.ones(2, 1, 6, 6)
    uniform = diffusion_loss(pred, target, t, alphas, 0.0, position_weights=ones)
    torch.testing.assert_close(uniform, plain)
    hole = torch.zeros(2, 1, 6, 6)
    hole[:, :, 2:5, 1:4] = 1
    weights = 1 + 9 * hole  # masked_loss_weight 10 where the latent is repainted
    squared = (pred - target) ** 2
    expected = torch.stack(
        [(squared[i] * weights[i]).sum() / (weights[i].sum() * 4) for i in range(2)]
    ).mean()
    torch.testing.assert_close(
        diffusion_loss(pred, target, t, alphas, 0.0, position_weights=weights), expected
    )
    only_hole = diffusion_loss(pred, target, t, alphas, 0.0, position_weights=hole + 1e-9)
    torch.testing.assert_close(only_hole, squared[:, :, 2:5, 1:4].mean(dim=(1, 2, 3)).mean())


def test_clip_tower_reads_open_clip_and_transformers_files(tmp_path):
    from safetensors.torch import save_file

    from exemplar_core.encoder import ExemplarEncoder
    from train.model_init import read_clip_tower

    tower = ExemplarEncoder(TINY.encoder).tower.state_dict()
    hf = keymap.clip_open_clip_to_transformers(tower)
    save_file({k: v.contiguous() for k, v in hf.items()}, str(tmp_path / "hf.safetensors"))
    save_file(
        {f"visual.{k}": v.contiguous() for k, v in tower.items()}, str(tmp_path / "oc.safetensors")
    )
    for name in ("hf.safetensors", "oc.safetensors"):
        read = read_clip_tower(tmp_path / name)
        assert read.keys() == tower.keys()
        assert all(torch.equal(read[k], tower[k]) for k in tower)
    save_file({"foo": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    import pytest

    with pytest.raises(ValueError, match="not a CLIP vision tower"):
        read_clip_tower(tmp_path / "bad.safetensors")


def test_timestep_bias_weights_the_chosen_end_and_uniform_is_unchanged():
    assert timestep_weights(1000, "none") is None
    later = timestep_weights(1000, "later", multiplier=3.0, portion=0.25)
    assert later[:750].eq(1).all() and later[750:].eq(3).all()
    earlier = timestep_weights(1000, "earlier", multiplier=2.0, portion=0.1)
    assert earlier[:100].eq(2).all() and earlier[100:].eq(1).all()
    # 'none' draws exactly what torch.randint draws (the official sampling, bit for bit)
    a = draw_timesteps(64, 1000, None, torch.Generator().manual_seed(1))
    b = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    drawn = draw_timesteps(40000, 1000, later, torch.Generator().manual_seed(2))
    share = (drawn >= 750).float().mean().item()
    assert abs(share - 0.5) < 0.02  # 250 * 3 / (750 + 250 * 3)
    assert drawn.min() >= 0 and drawn.max() < 1000


def test_timestep_bias_settings_are_checked():
    from train.config import ConfigError, load_config

    for bad in (["train.timestep_bias_multiplier=0"], ["train.timestep_bias_portion=1"]):
        try:
            load_config(
                None, ["model.init=random", "data.path=x.jsonl", "train.timestep_bias=later", *bad]
            )
        except ConfigError as exc:
            assert "timestep_bias" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
