"""LoRA files: reading without running code, the checks' messages, and the merge arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
from hostile import RunsCode
from safetensors.torch import save_file

from exemplar_core import lora as L
from exemplar_core.checkpoint import checkpoint_from_model, save_single_file
from exemplar_core.lora import LoraError, apply_lora, check_lora, check_strength, read_lora

LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CROSS_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
CONV = "down_blocks.0.resnets.0.conv1"
MAPPER = "mapper.resblocks.0.mlp.c_fc"


def _pair(module: torch.nn.Module, rank: int, alpha: float | None, stem: str) -> dict:
    """Random down/up for one layer (a convolution's up is [out, rank, 1, 1])."""
    w = module.weight
    down = torch.randn(rank, *w.shape[1:])
    up = torch.randn(w.shape[0], rank, *([1, 1] if w.ndim == 4 else []))
    entries = L.lora_pair(stem, down, up, alpha if alpha is not None else rank)
    if alpha is None:
        del entries[f"{stem}.alpha"]
    return entries


def _tensors(model, rank=4, alpha=2.0, unet=(LINEAR, CONV), mapper=(MAPPER,), diffs=True):
    torch.manual_seed(7)
    tensors = {}
    for path in unet:
        tensors.update(_pair(model.unet.get_submodule(path), rank, alpha, L.unet_key(path)))
    for path in mapper:
        tensors.update(_pair(model.encoder.get_submodule(path), rank, alpha, L.exemplar_key(path)))
    if diffs:
        tensors["pbe_exemplar.proj_out.diff"] = torch.randn_like(model.encoder.proj_out.weight)
        tensors["pbe_exemplar.proj_out.diff_b"] = torch.randn_like(model.encoder.proj_out.bias)
        tensors["pbe_exemplar.learnable_vector.diff"] = torch.randn_like(
            model.encoder.learnable_vector
        )
    return tensors


def _save(tmp_path, tensors, name="a.safetensors", **metadata):
    meta = {"rank": "4", "alpha": "2", "exemplar": "lora", "base_model": "tiny test model"}
    meta.update(metadata)
    return read_lora(L.save_lora(tensors, meta, tmp_path / name))


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _shapes(model):
    unet = {k: tuple(v.shape) for k, v in model.unet.state_dict().items()}
    return unet, {k: tuple(v.shape) for k, v in model.encoder.state_dict().items()}


def test_apply_adds_strength_times_alpha_over_rank_up_down_to_linear_and_conv(tmp_path, tiny_model):
    tensors = _tensors(tiny_model)
    lora = _save(tmp_path, tensors)
    before = _params(tiny_model)
    apply_lora(tiny_model, lora, 0.7)
    after = tiny_model.unet.state_dict()
    for path in (LINEAR, CONV):
        stem = L.unet_key(path)
        down, up = tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"]
        w0 = before[f"unet.{path}.weight"]
        expected = w0 + 0.7 * (2.0 / 4) * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
        torch.testing.assert_close(after[f"{path}.weight"], expected)
        assert not torch.equal(after[f"{path}.weight"], w0)
    stem = L.exemplar_key(MAPPER)
    up, down = tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"]
    expected = before[f"encoder.{MAPPER}.weight"] + 0.7 * 0.5 * up @ down
    torch.testing.assert_close(tiny_model.encoder.state_dict()[f"{MAPPER}.weight"], expected)


def test_diffs_add_strength_times_the_difference(tmp_path, tiny_model):
    tensors = _tensors(tiny_model, unet=(), mapper=())
    before = _params(tiny_model)
    apply_lora(tiny_model, _save(tmp_path, tensors), -1.5)
    enc = tiny_model.encoder.state_dict()
    for key, entry in (
        ("proj_out.weight", "pbe_exemplar.proj_out.diff"),
        ("proj_out.bias", "pbe_exemplar.proj_out.diff_b"),
        ("learnable_vector", "pbe_exemplar.learnable_vector.diff"),
    ):
        torch.testing.assert_close(enc[key], before[f"encoder.{key}"] - 1.5 * tensors[entry])


def test_missing_alpha_means_alpha_equals_rank(tmp_path, tiny_model):
    tensors = _pair(tiny_model.unet.get_submodule(LINEAR), 4, None, L.unet_key(LINEAR))
    w0 = tiny_model.unet.get_submodule(LINEAR).weight.detach().clone()
    apply_lora(tiny_model, _save(tmp_path, tensors, exemplar="frozen"))
    stem = L.unet_key(LINEAR)
    up, down = tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"]
    torch.testing.assert_close(tiny_model.unet.get_submodule(LINEAR).weight, w0 + up @ down)


def test_strength_zero_is_the_identity_and_strength_is_linear(tmp_path, tiny_model):
    lora = _save(tmp_path, _tensors(tiny_model))
    before = _params(tiny_model)
    apply_lora(tiny_model, lora, 0.0)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
    apply_lora(tiny_model, lora, 0.5)
    apply_lora(tiny_model, lora, 0.5)
    twice = _params(tiny_model)
    tiny_model.load_state_dict(before)
    apply_lora(tiny_model, lora, 1.0)
    once = tiny_model.state_dict()
    changed = [k for k in once if not torch.equal(once[k], before[k])]
    assert len(changed) == 2 + 1 + 3  # two UNet layers, a mapper layer, proj_out w/b, vector
    for key in changed:
        torch.testing.assert_close(once[key], twice[key])


def test_two_files_stack(tmp_path, tiny_model):
    a = _save(tmp_path, _tensors(tiny_model, diffs=False), "a.safetensors")
    torch.manual_seed(3)
    b_tensors = _pair(tiny_model.unet.get_submodule(LINEAR), 2, 1.0, L.unet_key(LINEAR))
    b = _save(tmp_path, b_tensors, "b.safetensors", rank="2", exemplar="frozen")
    w0 = tiny_model.unet.get_submodule(LINEAR).weight.detach().clone()
    apply_lora(tiny_model, a, 1.0)
    after_a = tiny_model.unet.get_submodule(LINEAR).weight.detach().clone()
    apply_lora(tiny_model, b, 0.3)
    stem = L.unet_key(LINEAR)
    delta_b = (
        0.3 * 0.5 * b_tensors[f"{stem}.lora_up.weight"] @ b_tensors[f"{stem}.lora_down.weight"]
    )
    torch.testing.assert_close(tiny_model.unet.get_submodule(LINEAR).weight, after_a + delta_b)
    assert not torch.equal(after_a, w0)


def test_fp16_weights_are_merged_in_fp32_and_stay_fp16(tmp_path, tiny_model):
    tensors = _tensors(tiny_model, unet=(LINEAR,), mapper=(), diffs=False)
    tiny_model.half()
    w0 = tiny_model.unet.get_submodule(LINEAR).weight.detach().clone()
    apply_lora(tiny_model, _save(tmp_path, tensors), 1.0)
    stem = L.unet_key(LINEAR)
    delta = 0.5 * tensors[f"{stem}.lora_up.weight"] @ tensors[f"{stem}.lora_down.weight"]
    weight = tiny_model.unet.get_submodule(LINEAR).weight
    assert weight.dtype == torch.float16
    assert torch.equal(weight, (w0.float() + delta).half())


def test_ldm_named_unet_keys_apply_like_diffusers_named_ones(tmp_path, tiny_model):
    tensors = _tensors(tiny_model, unet=(LINEAR,), mapper=(), diffs=False)
    ldm = {
        k.replace(
            L.unet_key(LINEAR), "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
        ): v
        for k, v in tensors.items()
    }
    before = _params(tiny_model)
    apply_lora(tiny_model, _save(tmp_path, tensors, "d.safetensors"))
    diffusers_named = _params(tiny_model)
    tiny_model.load_state_dict(before)
    apply_lora(tiny_model, _save(tmp_path, ldm, "l.safetensors"))
    key = f"unet.{LINEAR}.weight"
    assert torch.equal(tiny_model.state_dict()[key], diffusers_named[key])
    assert not torch.equal(diffusers_named[key], before[key])


def test_save_and_read_keep_tensors_and_metadata(tmp_path, tiny_model):
    tensors = _tensors(tiny_model)
    lora = _save(tmp_path, tensors, unet_modules=json.dumps(["attention", "conv"]))
    assert lora.tensors.keys() == tensors.keys()
    assert all(torch.equal(lora.tensors[k], v.float()) for k, v in tensors.items())
    assert lora.metadata["format"] == L.FORMAT and lora.metadata["base_model"] == "tiny test model"
    assert (lora.rank, lora.alpha, lora.exemplar_mode) == (4, 2.0, "lora")
    assert lora.unet_stems() == sorted(L.unet_key(p) for p in (LINEAR, CONV))
    assert lora.exemplar_targets() == {
        "pbe_exemplar.learnable_vector": "learnable_vector",
        f"pbe_exemplar.{MAPPER}": f"{MAPPER}.weight",
        "pbe_exemplar.proj_out": "proj_out.weight",
    }
    assert set(lora.unet_tensors()) == {k for k in tensors if k.startswith("lora_unet_")}


def test_describe_names_rank_groups_mode_and_provenance(tmp_path, tiny_model):
    text = _save(
        tmp_path,
        _tensors(tiny_model),
        training_step="120",
        training_config=json.dumps({"train": {"lr": 1e-4, "method": "lora"}}),
    ).describe()
    assert "rank:     4, alpha 2 (scale alpha/rank = 0.5)" in text
    assert "unet:     2 layers (attention 1, conv 1)" in text
    assert "exemplar: lora: LoRA on 1 mapper layer;" in text
    assert "base:     tiny test model" in text and "trained:  120 steps" in text
    assert "train.method=lora" in text and "train.lr=0.0001" in text


def _refused(tmp_path, tiny_model, tensors, match, **metadata):
    lora = _save(tmp_path, tensors, **metadata)
    with pytest.raises(LoraError, match=match) as info:
        check_lora(lora, *_shapes(tiny_model), "the test model")
    return str(info.value)


def test_sd_text_encoder_loras_are_refused_naming_the_base(tmp_path, tiny_model):
    unet = _tensors(tiny_model, unet=(LINEAR,), mapper=(), diffs=False)
    te = L.lora_pair(
        "lora_te_text_model_encoder_layers_0_mlp_fc1", torch.ones(4, 768), torch.ones(3072, 4), 4
    )
    msg = _refused(tmp_path, tiny_model, {**unet, **te}, "SD 1.x LoRA with a text-encoder part")
    assert "has no text encoder" in msg and "lora_te_text_model_encoder_layers_0_mlp_fc1" in msg
    te2 = L.lora_pair(
        "lora_te1_text_model_encoder_layers_0_mlp_fc1", torch.ones(4, 768), torch.ones(8, 4), 4
    )
    _refused(tmp_path, tiny_model, te2, "is an SDXL LoRA with a text-encoder part")


def test_sdxl_unet_lora_is_refused(tmp_path, tiny_model):
    sdxl = L.lora_pair(
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
        torch.ones(4, 2048),
        torch.ones(640, 4),
        4,
    )
    msg = _refused(tmp_path, tiny_model, sdxl, "is an SDXL LoRA: 1 of its 1 UNet layers")
    assert "name no layer of the test model" in msg and "2048-wide cross-attention" in msg


def test_sd2_shapes_are_refused_naming_layer_found_and_expected(tmp_path, tiny_model):
    sd2 = L.lora_pair(L.unet_key(CROSS_K), torch.ones(4, 1024), torch.ones(64, 4), 4)
    msg = _refused(tmp_path, tiny_model, sd2, f"does not fit the test model's UNet layer {CROSS_K}")
    assert "found lora_down [4, 1024] and lora_up [64, 4]" in msg
    assert "expected lora_down [4, 32] and lora_up [32, 4]" in msg
    assert "base_model=tiny test model" in msg and "SD 2.x shapes" in msg


def test_lycoris_is_refused_as_unsupported(tmp_path, tiny_model):
    stem = L.unet_key(LINEAR)
    loha = {f"{stem}.hada_w1_a": torch.ones(32, 4), f"{stem}.hada_w1_b": torch.ones(4, 32)}
    msg = _refused(tmp_path, tiny_model, loha, "LyCORIS LoHa")
    assert "not supported" in msg and "lora_down.weight" in msg


def test_rank_layouts_that_do_not_add_up_are_refused(tmp_path, tiny_model):
    stem = L.unet_key(LINEAR)
    bad = L.lora_pair(stem, torch.ones(4, 32), torch.ones(32, 3), 4)
    _refused(tmp_path, tiny_model, bad, r"lora_down \[4, 32\] has 4 rows but lora_up \[32, 3\]")
    good = L.lora_pair(stem, torch.ones(4, 32), torch.ones(32, 4), 4)
    _refused(tmp_path, tiny_model, good, "has rank 4 .* metadata says rank 8", rank="8")


def test_nonfinite_values_are_refused(tmp_path, tiny_model):
    tensors = _tensors(tiny_model, unet=(LINEAR,), mapper=(), diffs=False)
    tensors[f"{L.unet_key(LINEAR)}.lora_up.weight"][0, 0] = float("nan")
    _refused(tmp_path, tiny_model, tensors, "NaN or infinite values in 1 tensor")


def test_lora_on_a_model_without_exemplar_encoder_is_refused(tmp_path, tiny_model):
    lora = _save(tmp_path, _tensors(tiny_model))
    unet, _ = _shapes(tiny_model)
    with pytest.raises(LoraError, match="not a Paint-by-Example model"):
        check_lora(lora, unet, {}, "an SD 1.5 MODEL")


def test_pickled_lora_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "lora.ckpt"
    torch.save({"lora_unet_x.lora_down.weight": torch.ones(1), "x": RunsCode(marker)}, path)
    with pytest.raises(LoraError, match="read only from .safetensors; this pack never unpickles"):
        read_lora(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused_naming_the_file(tmp_path, tiny_model):
    good = L.save_lora(_tensors(tiny_model), {}, tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(LoraError, match=r"cut\.safetensors is not a readable .safetensors file"):
        read_lora(cut)
    model = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "model.safetensors")
    with pytest.raises(LoraError, match="is a whole Paint-by-Example model"):
        read_lora(model)
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.ones(8, 4, 3, 3)}
    save_file(sd, tmp_path / "sd.safetensors")
    with pytest.raises(LoraError, match="whole model checkpoint .*text-to-image checkpoint"):
        read_lora(tmp_path / "sd.safetensors")
    save_file({"foo.bar": torch.ones(2)}, tmp_path / "other.safetensors")
    with pytest.raises(LoraError, match=r"no LoRA keys \(top-level keys: foo.bar\)"):
        read_lora(tmp_path / "other.safetensors")
    with pytest.raises(LoraError, match="does not exist"):
        read_lora(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "x", 1000.0])
def test_bad_strength_is_refused_naming_the_setting(value, tiny_model, tmp_path):
    with pytest.raises(LoraError, match="^my strength must be a finite number between -100"):
        check_strength(value, "my strength")
    with pytest.raises(LoraError, match="LoRA strength"):
        apply_lora(tiny_model, _save(tmp_path, _tensors(tiny_model)), value)


def test_parse_lora_argument_takes_the_strength_after_the_last_colon(tmp_path):
    plain = tmp_path / "a.safetensors"
    plain.write_bytes(b"")
    assert L.parse_lora_argument(str(plain)) == (plain, 1.0)
    assert L.parse_lora_argument(f"{plain}:0.25") == (plain, 0.25)
    colon = tmp_path / "b:2"
    colon.write_bytes(b"")
    assert L.parse_lora_argument(str(colon)) == (colon, 1.0)  # an existing file wins
    with pytest.raises(LoraError, match=r"--lora .*:x: the strength 'x' after the last ':'"):
        L.parse_lora_argument(f"{plain}:x")
    with pytest.raises(LoraError, match=r"--lora .*:nan: the strength must be a finite number"):
        L.parse_lora_argument(f"{plain}:nan")


def test_rank_zero_and_one_dimensional_text_encoder_weights_are_refused_not_crashed(
    tmp_path, tiny_model
):
    empty = L.lora_pair(L.unet_key(LINEAR), torch.ones(0, 32), torch.ones(32, 0), 4)
    msg = _refused(tmp_path, tiny_model, empty, "has rank 0", rank="0")
    assert L.unet_key(LINEAR) in msg and "lora_down [0, 32]" in msg
    flat = {"lora_te_x.lora_down.weight": torch.ones(4), "lora_te_x.lora_up.weight": torch.ones(4)}
    _refused(tmp_path, tiny_model, flat, "SD 1.x LoRA with a text-encoder part")


def test_the_diffusers_and_the_ldm_name_of_one_layer_in_one_file_are_refused(tmp_path, tiny_model):
    tensors = _tensors(tiny_model, unet=(LINEAR,), mapper=(), diffs=False)
    ldm_stem = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    ldm = {k.replace(L.unet_key(LINEAR), ldm_stem): v.clone() for k, v in tensors.items()}
    both = {**tensors, **ldm}
    msg = _refused(tmp_path, tiny_model, both, f"both name the test model's UNet layer {LINEAR}")
    assert L.unet_key(LINEAR) in msg and ldm_stem in msg
    with pytest.raises(LoraError, match="expected each layer once"):
        apply_lora(tiny_model, read_lora(tmp_path / "a.safetensors"))


def test_a_whole_model_is_refused_from_its_header_before_its_tensors_are_read(
    tmp_path, tiny_model, monkeypatch
):
    from exemplar_core.checkpoint import safe_read

    model = save_single_file(checkpoint_from_model(tiny_model), tmp_path / "model.safetensors")
    reads = []
    real = safe_read.read_safetensors

    def recorded(path, lazy, header=None):
        reads.append(lazy)
        return real(path, lazy, header)

    monkeypatch.setattr(safe_read, "read_safetensors", recorded)
    with pytest.raises(LoraError, match="is a whole Paint-by-Example model"):
        read_lora(model)
    assert reads == [True]
    lora = L.save_lora(_tensors(tiny_model), {}, tmp_path / "a.safetensors")
    assert read_lora(lora).tensors[f"{L.unet_key(LINEAR)}.alpha"].device.type == "cpu"
    assert reads == [True, True, False]


def test_a_lora_without_the_packs_metadata_is_checked_with_one_warning(
    tmp_path, tiny_model, caplog
):
    path = tmp_path / "kohya.safetensors"
    tensors = _tensors(tiny_model, unet=(LINEAR,), mapper=(), diffs=False)
    save_file(tensors, path, {"ss_base_model_version": "sd_v1"})
    lora = read_lora(path)
    with caplog.at_level("WARNING", logger=L.__name__):
        check_lora(lora, *_shapes(tiny_model), "the test model")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "kohya.safetensors has no paint-by-example-lora" in warnings[0]
    assert "ss_base_model_version=sd_v1" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger=L.__name__):
        apply_lora(tiny_model, lora)
    assert len(caplog.records) == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger=L.__name__):
        check_lora(_save(tmp_path, tensors), *_shapes(tiny_model), "the test model")
    assert not caplog.records
