"""The trainer config: official defaults, --set overrides, documented --print-config, warm-up."""

from __future__ import annotations

import dataclasses
import math

import pytest
import tomllib

from train.__main__ import main
from train.config import (
    SECTIONS,
    ConfigError,
    TrainConfig,
    config_from_dict,
    load_config,
    to_toml,
)
from train.trainer import LrSchedule, warmup_factor


def _minimal(tmp_path, text: str = ""):
    path = tmp_path / "c.toml"
    path.write_text('[model]\ninit = "random"\n[data]\npath = "a.jsonl"\n' + text)
    return path


def test_defaults_are_the_official_recipe():
    config = TrainConfig()
    assert config.train.lr == 1e-5
    assert config.train.warmup_steps == 10000 and config.train.warmup_start == 1e-6
    assert config.train.betas == [0.9, 0.999] and config.train.weight_decay == 0.01
    assert config.train.batch_size == 4 and config.train.seed == 23
    assert config.train.cond_dropout == 0.2
    assert (config.data.min_area, config.data.max_area) == (0.02, 0.8)
    assert config.data.bezier_p == 0.5 and config.data.box_expansion == 0.4
    assert config.data.zoom_share == 0.6 and config.data.resolution == 512
    assert config.subject.prior_weight == 1.0


def test_every_option_is_documented():
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert len(f.metadata.get("help", "")) > 10, f"{cls.__name__}.{f.name}"


def test_print_config_is_valid_toml_that_round_trips(tmp_path):
    config = load_config(_minimal(tmp_path), ["train.lr=3e-6", "data.classes=['dog']"])
    text = to_toml(config)
    assert "# AdamW learning rate" in text
    again = config_from_dict(tomllib.loads(text))
    assert again == config


def test_set_overrides_parse_toml_values(tmp_path):
    config = load_config(
        _minimal(tmp_path),
        ["train.lr=2e-5", "train.ema=false", "train.mixed_precision=bf16", "out_dir=/tmp/x"],
    )
    assert config.train.lr == 2e-5 and config.train.ema is False
    assert config.train.mixed_precision == "bf16" and config.out_dir == "/tmp/x"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown option"),
        ("train.mixed_precision=fp8", "not one of"),
        ("train.batch_size=0", "batch_size must be >= 1"),
        ("data.min_area=0.9", "min_area"),
        ("model.init=sd", "model.path"),
        ("train.noise_offset=-0.1", "noise_offset must be >= 0"),
        ("train.masked_loss_weight=0", "masked_loss_weight must be > 0"),
        ("train.method=qlora", r"train.method = 'qlora' is not one of \['auto', 'full', 'lora'\]"),
        ("lora.rank=0", "lora.rank must be >= 1"),
        ("lora.alpha=0", r"lora.alpha must be > 0"),
        ("lora.dropout=1.0", r"lora.dropout must be in \[0, 1\)"),
        ("lora.unet_modules=['attn']", r"unknown group\(s\) \['attn'\]; choose from \['attention'"),
        ("lora.unet_modules=['conv', 'conv']", "lists a group twice"),
        ("lora.exemplar=mapper", r"lora.exemplar = 'mapper' is not one of"),
    ],
)
def test_bad_options_fail_with_a_clear_message(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_minimal(tmp_path), [override])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("train.val_scale", "train.val_similarity"),
        ("subject.prior_scale", "subject.prior_similarity"),
    ],
)
def test_an_old_option_name_still_sets_the_renamed_option_with_a_warning(tmp_path, old, new):
    with pytest.warns(FutureWarning, match=f"{old} is deprecated: it is now called {new}"):
        by_old = load_config(_minimal(tmp_path), [f"{old}=3.5"])
    by_new = load_config(_minimal(tmp_path), [f"{new}=3.5"])
    assert by_old == by_new and by_new != load_config(_minimal(tmp_path))
    section, key = new.split(".")
    assert getattr(getattr(by_old, section), key) == 3.5


def test_an_option_given_by_its_old_and_new_name_is_refused(tmp_path):
    path = _minimal(tmp_path, "[train]\nval_scale = 3.0\nval_similarity = 4.0\n")
    with pytest.raises(ConfigError, match=r"c.toml:6: train.val_scale and train.val_similarity"):
        load_config(path)


def test_a_lora_error_names_the_line_of_the_config_file(tmp_path):
    path = _minimal(tmp_path, "[lora]\nexemplar = 'frozen'\nunet_modules = []\n")
    with pytest.raises(ConfigError, match=r"c.toml:7: lora.unet_modules is empty .*nothing would"):
        load_config(path)


@pytest.mark.parametrize(
    ("subject", "method", "resolved"),
    [
        (False, "auto", "full"),
        (True, "auto", "lora"),
        (True, "full", "full"),
        (False, "lora", "lora"),
    ],
)
def test_train_method_auto_is_lora_in_subject_mode_and_full_otherwise(
    tmp_path, subject, method, resolved
):
    options = [f"train.method={method}"]
    if subject:
        options += ["subject.enabled=true", "subject.path=s.jsonl", "subject.num_prior=0"]
    assert load_config(_minimal(tmp_path), options).method == resolved


def test_sd_start_needs_clip_weights(tmp_path):
    with pytest.raises(ConfigError, match="model.clip"):
        load_config(_minimal(tmp_path), ["model.init=sd", "model.path=x.safetensors"])


def test_subject_mode_with_prior_needs_class_exemplars(tmp_path):
    with pytest.raises(ConfigError, match="class_exemplars"):
        load_config(_minimal(tmp_path), ["subject.enabled=true", "subject.path=s.jsonl"])


def test_cli_print_config_prints_documented_defaults(capsys):
    assert main(["--print-config"]) == 0
    out = capsys.readouterr().out
    assert "lr = 1e-05" in out and "# linear warm-up steps" in out
    assert "box_expansion = 0.4" in out and "extend_share =" not in out
    lora = out[out.index("[lora]") :]
    assert "rank = 16" in lora and "alpha = 16.0" in lora and 'exemplar = "lora"' in lora
    assert 'unet_modules = ["attention"]' in lora and "# UNet layer groups" in lora
    assert 'method = "auto"' in out and "LoRA in subject mode" in out


def test_old_name_extend_share_gives_the_same_config_as_box_expansion(tmp_path):
    expected = load_config(_minimal(tmp_path, "box_expansion = 0.25\n"))
    assert expected.data.box_expansion == 0.25
    with pytest.warns(FutureWarning, match=r"data\.extend_share .* data\.box_expansion"):
        from_file = load_config(_minimal(tmp_path, "extend_share = 0.25\n"))
    with pytest.warns(FutureWarning, match=r"data\.extend_share"):
        from_set = load_config(_minimal(tmp_path), ["data.extend_share=0.25"])
    assert from_file == expected and from_set == expected


def test_extend_share_and_box_expansion_together_are_refused(tmp_path):
    path = _minimal(tmp_path, "box_expansion = 0.2\nextend_share = 0.3\n")
    with pytest.raises(ConfigError, match=r"c\.toml:6: data\.extend_share and data\.box_expansion"):
        load_config(path)
    with pytest.raises(ConfigError, match="both set.*keep only data.box_expansion"):
        load_config(_minimal(tmp_path, "box_expansion = 0.2\n"), ["data.extend_share=0.3"])


def test_cli_reports_config_errors_without_a_traceback(tmp_path, capsys):
    assert main(["--config", str(_minimal(tmp_path)), "--set", "train.lr=-1"]) == 2
    assert "train.lr must be > 0" in capsys.readouterr().err


def test_warmup_rises_linearly_from_1e_6_to_1():
    assert warmup_factor(0, 10000, 1e-6) == pytest.approx(1e-6)
    assert warmup_factor(5000, 10000, 1e-6) == pytest.approx(0.5, abs=1e-5)
    assert warmup_factor(10000, 10000, 1e-6) == 1.0
    assert warmup_factor(50000, 10000, 1e-6) == 1.0


def test_lr_schedule_is_constant_after_warm_up_unless_a_decay_is_set():
    plain = LrSchedule(warmup_steps=100, warmup_start=1e-6, total_steps=1000)
    assert [plain(s) for s in (0, 100, 999, 1000)] == [
        warmup_factor(s, 100, 1e-6) for s in (0, 100, 999, 1000)
    ]
    linear = LrSchedule(100, 1e-6, 1000, decay="linear", decay_steps=400, end=0.1)
    assert linear.decay_start == 600
    assert linear(50) == pytest.approx(warmup_factor(50, 100, 1e-6))
    assert linear(600) == 1.0
    assert linear(800) == pytest.approx(0.55)  # half-way: 0.1 + 0.9 / 2
    assert linear(1000) == pytest.approx(0.1)
    assert linear(1200) == pytest.approx(0.1)  # past the end (a resumed, longer run) stays there
    cosine = LrSchedule(0, 1e-6, 1000, decay="cosine")  # decay_steps 0: the whole run
    assert cosine.decay_start == 0
    assert cosine(0) == 1.0
    assert cosine(250) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine(500) == pytest.approx(0.5)
    assert cosine(1000) == pytest.approx(0.0, abs=1e-12)
    longer = LrSchedule(100, 1e-6, 1000, decay="linear", decay_steps=5000)
    assert longer.decay_start == 100  # a decay longer than the run starts after the warm-up


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr_decay_steps=-1", "train.lr_decay_steps must be >= 0"),
        ("train.lr_end=1.5", "train.lr_end in 0..1"),
        ('train.lr_decay="step"', "is not one of"),
    ],
)
def test_bad_lr_decay_settings_are_named(tmp_path, capsys, override, message):
    assert main(["--config", str(_minimal(tmp_path)), "--set", override]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "path",
    sorted((__import__("pathlib").Path(__file__).parents[1] / "train" / "configs").glob("*.toml")),
    ids=lambda p: p.name,
)
def test_example_configs_load(path):
    config = load_config(path)
    assert config.out_dir.startswith("runs/")
