"""data.variants and data.cache: epochs >= K reuse the frozen parts' outputs of epoch e mod K,
and a cached run trains exactly as the same schedule uncached (also across a resume)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch
from diffusers import AutoencoderKL
from test_train_subject import _config as subject_config
from train_support import (
    assert_same_weights,
    checkpoint_weights,
    kill_in_micro_batch,
    make_images,
    tiny_config,
    write_jsonl,
)

from exemplar_core.encoder import ExemplarEncoder
from train.cache import FrozenCache, FrozenOutputs, compute_frozen
from train.config import ConfigError, config_from_dict
from train.dataset import EpochBatchSampler
from train.trainer import Trainer, train

# 4 training images (one of 5 held out), batches of 2: 2 micro-batches per epoch; K = 2 variants
# and 4 epochs, so micro-batches 5..8 (epochs 2 and 3) repeat the examples of 1..4.
RUN = {"max_steps": 0, "epochs": 4, "checkpoint_every": 5}
VARIANTS = {"variants": 2}


@pytest.fixture(scope="module")
def four_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("four")
    return write_jsonl(folder / "ann.jsonl", make_images(folder, 5, seed=3))


@contextmanager
def frozen_calls(monkeypatch):
    """Records (micro-batch number, part, rows) for each VAE encode and tower call made inside
    Trainer.training_step."""
    calls: list[tuple[int, str, int]] = []
    current = {"micro": None}
    real_step, real_encode, real_pooled = (
        Trainer.training_step,
        AutoencoderKL.encode,
        ExemplarEncoder.pooled,
    )

    def step(self, batch):
        current["micro"] = self.consumed  # counted before the step: 1 for the first
        try:
            return real_step(self, batch)
        finally:
            current["micro"] = None

    def encode(self, x, *args, **kwargs):
        if current["micro"] is not None:
            calls.append((current["micro"], "vae", x.shape[0]))
        return real_encode(self, x, *args, **kwargs)

    def pooled(self, pixels):
        if current["micro"] is not None:
            calls.append((current["micro"], "tower", pixels.shape[0]))
        return real_pooled(self, pixels)

    monkeypatch.setattr(Trainer, "training_step", step)
    monkeypatch.setattr(AutoencoderKL, "encode", encode)
    monkeypatch.setattr(ExemplarEncoder, "pooled", pooled)
    yield calls


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory, four_images):
    """The K = 2 schedule trained uncached and cached, with the frozen calls of each."""
    monkeypatch = pytest.MonkeyPatch()
    runs = {}
    try:
        for cache in ("off", "cpu"):
            out = tmp_path_factory.mktemp(f"cache-{cache}")
            config = tiny_config(out, four_images, train=RUN, data={**VARIANTS, "cache": cache})
            with frozen_calls(monkeypatch) as calls:
                summary = train(config)
            runs[cache] = (out, summary, list(calls))
            monkeypatch.undo()
    finally:
        monkeypatch.undo()
    return runs


@pytest.mark.slow
def test_cached_epochs_after_k_do_no_frozen_work_and_train_as_the_uncached_schedule(
    variant_runs,
):
    (plain, plain_summary, plain_calls), (cached, summary, calls) = (
        variant_runs["off"],
        variant_runs["cpu"],
    )
    assert summary["step"] == plain_summary["step"] == 8
    # Uncached: every micro-batch encodes target and masked image and runs the tower.
    assert sorted({micro for micro, _, _ in plain_calls}) == list(range(1, 9))
    # Cached: epochs 0 and 1 (micro-batches 1..4) compute, epochs 2 and 3 reuse everything.
    assert sorted({micro for micro, _, _ in calls}) == [1, 2, 3, 4]
    per_batch = sorted((part, rows) for micro, part, rows in calls if micro == 1)
    assert per_batch == [("tower", 2), ("vae", 2), ("vae", 2)]
    assert summary["rank_data_checksums"] == plain_summary["rank_data_checksums"]
    assert_same_weights(checkpoint_weights(cached, 8), checkpoint_weights(plain, 8))
    log = (cached / "train.log").read_text()
    assert "frozen-output cache on cpu: up to 8 examples (2 variants)" in log
    # 8 micro-batches of 2: the first 4 computed, the last 4 reused; plain runs hold no cache.
    assert summary["cache"]["computed"] == summary["cache"]["reused"] == 8
    assert summary["cache"]["bytes"] > 0 and "cache" not in plain_summary
    assert "frozen-output cache: 8 examples computed, 8 reused" in log


@pytest.mark.slow
def test_resumed_cached_run_recomputes_its_empty_cache_and_ends_identical(
    tmp_path, four_images, variant_runs, monkeypatch
):
    cached = variant_runs["cpu"][0]
    config = tiny_config(tmp_path, four_images, train=RUN, data={**VARIANTS, "cache": "cpu"})
    kill_in_micro_batch(monkeypatch, config, 7, "step-00000005")
    with frozen_calls(monkeypatch) as calls:
        summary = train(config, resume=True)
    assert summary["step"] == 8
    # Resumed in epoch 2 with an empty cache: micro-batches 6..8 recompute their examples.
    assert sorted({micro for micro, _, _ in calls}) == [6, 7, 8]
    assert_same_weights(checkpoint_weights(tmp_path, 8), checkpoint_weights(cached, 8))


def test_variants_repeat_epoch_mod_k_and_equal_the_recipe_while_epochs_are_below_k():
    recipe = EpochBatchSampler(10, 2, 5)
    varied = EpochBatchSampler(10, 2, 5, variants=3)
    first = [b for _, b in zip(range(15), recipe, strict=False)]
    second = [b for _, b in zip(range(20), varied, strict=False)]
    assert second[:15] == first  # 3 epochs of 5 batches: the recipe's keys exactly
    assert {key for batch in second[15:] for key, _ in batch} == {0}  # epoch 3 -> variant 0
    assert sorted(i for batch in second[15:] for _, i in batch) == list(range(10))
    assert second[15:] != first[:5]  # a new order of the same examples


def test_with_variants_each_rank_keeps_the_same_images_every_epoch():
    shards = []
    for rank in range(2):
        sampler = EpochBatchSampler(11, 2, 7, rank, 2, variants=2)
        batches = [b for _, b in zip(range(8), sampler, strict=False)]  # 4 epochs of 2
        epochs = [{i for b in batches[2 * e : 2 * e + 2] for _, i in b} for e in range(4)]
        shard = set(sampler.shard())
        assert all(indices <= shard for indices in epochs)
        assert [b[0][0] for b in batches] == [0, 0, 1, 1, 0, 0, 1, 1]
        shards.append(shard)
    assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(11))


def _fake_batch(keys: list[tuple[int, int, int]]) -> dict:
    return {"cache_key": torch.tensor(keys), "image": torch.tensor(keys).float()}


def _fake_compute(calls: list[int]):
    """Frozen outputs that are a function of each row's key (as the real ones are)."""

    def compute(batch: dict) -> FrozenOutputs:
        calls.append(len(batch["cache_key"]))
        k = batch["image"].sum(dim=1)
        latent = k[:, None, None, None].expand(-1, 4, 2, 2).clone()
        return FrozenOutputs(latent, latent + 1, latent + 2, latent + 3, latent[:, :1], k[:, None])

    return compute


def test_cache_computes_only_the_rows_it_lacks_and_returns_them_in_batch_order():
    cache = FrozenCache(torch.device("cpu"), torch.device("cpu"), max_gb=1.0, variants=2)
    cache.keyed([None] * 6, 0, 1)
    calls: list[int] = []
    compute = _fake_compute(calls)
    cache.outputs(_fake_batch([(0, 0, 1), (0, 0, 2)]), compute)
    keys = [(0, 0, 2), (0, 0, 5), (0, 0, 1)]
    mixed = cache.outputs(_fake_batch(keys), compute)
    assert calls == [2, 1]  # the second batch computed only (0, 0, 5)
    expected = _fake_compute([])(_fake_batch(keys))
    for got, want in zip(mixed.tensors(), expected.tensors(), strict=True):
        assert torch.equal(got, want)
    assert (cache.computed, cache.reused, len(cache.entries)) == (3, 2, 3)
    assert cache.nbytes() == 3 * cache.entry_bytes
    assert cache.bound == 12  # 2 variants x 6 examples


def test_cache_refuses_to_grow_past_cache_max_gb_with_the_estimate():
    cache = FrozenCache(torch.device("cpu"), torch.device("cpu"), max_gb=1e-6, variants=3)
    cache.keyed([None] * 100, 0, 1)
    with pytest.raises(ConfigError) as error:
        cache.outputs(_fake_batch([(0, 0, 1)]), _fake_compute([]))
    message = str(error.value)
    assert "300 examples (3 variants)" in message and "data.cache_max_gb = 1e-06" in message
    assert "lower data.variants" in message


@pytest.mark.slow
def test_python_m_train_stops_with_the_cache_estimate_over_the_limit(tmp_path, four_images, capsys):
    from train.__main__ import main
    from train.config import to_toml

    config_file = tmp_path / "config.toml"
    config_file.write_text(to_toml(tiny_config(tmp_path / "run", four_images)))
    limit = ["data.variants=2", "data.cache=device", "data.cache_max_gb=0.00001"]
    code = main(["--config", str(config_file), *(a for item in limit for a in ("--set", item))])
    assert code == 2
    error = capsys.readouterr().err
    assert "error: data.cache: the frozen-output cache would grow to 8 examples" in error
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_frozen_outputs_draw_the_posterior_sample_encode_latent_draws(tiny_model):
    batch = {
        "image": torch.rand(2, 3, 64, 64) * 2 - 1,
        "masked_image": torch.rand(2, 3, 64, 64) * 2 - 1,
        "keep_mask": torch.ones(2, 1, 64, 64),
        "reference": torch.rand(2, 3, *[tiny_model.encoder.config.image_size] * 2),
    }
    with torch.no_grad():
        generator = torch.Generator().manual_seed(4)
        latents, masked, _, _ = compute_frozen(tiny_model, batch, torch.device("cpu")).draw(
            generator, tiny_model.latent_scale
        )
        generator.manual_seed(4)
        assert torch.equal(latents, tiny_model.encode_latent(batch["image"], generator))
        assert torch.equal(masked, tiny_model.encode_latent(batch["masked_image"], generator))


def test_config_cache_needs_variants():
    base = {"data": {"path": "a.jsonl", "cache": "cpu"}, "model": {"init": "random"}}
    with pytest.raises(ConfigError, match=r"data.cache = 'cpu' needs data.variants > 0"):
        config_from_dict(base)
    with pytest.raises(ConfigError, match="data.variants must be >= 0"):
        config_from_dict({**base, "data": {"path": "a.jsonl", "variants": -1}})
    config = config_from_dict({**base, "data": {"path": "a.jsonl", "cache": "cpu", "variants": 2}})
    assert (config.data.cache, config.data.variants) == ("cpu", 2)


def _subject_config(tmp_path, cache: str) -> dict:
    """test_train_subject's run (3 photos x 2 repeats, 4 prior samples, batches of 2 + 2) for 4
    steps with one variant, the prior samples generated once for both runs."""
    config = subject_config(tmp_path, num_prior=4)
    config["out_dir"] = str(tmp_path / f"run-{cache}")
    config["data"].update(variants=1, cache=cache)
    config["train"]["max_steps"] = 4
    config["subject"]["prior_dir"] = str(tmp_path / "prior")
    return config


@pytest.mark.slow
def test_subject_mode_caches_the_subject_and_the_prior_stream(tmp_path, monkeypatch):
    train(config_from_dict(_subject_config(tmp_path, "off")))
    with frozen_calls(monkeypatch) as calls:
        summary = train(config_from_dict(_subject_config(tmp_path, "cpu")))
    assert summary["samples"] == 4 * (2 + 2)
    # 6 subject examples (3 photos x 2 repeats) fill micro-batches 1..3, the 4 prior samples
    # 1..2; micro-batch 4 (both streams in their second epoch) is all reused (variants = 1).
    vae_rows = {}
    for micro, part, rows in calls:
        if part == "vae":
            vae_rows[micro] = vae_rows.get(micro, 0) + rows
    assert vae_rows == {1: 2 * 4, 2: 2 * 4, 3: 2 * 2}
    manifest = (tmp_path / "prior" / "prior.jsonl").read_text().splitlines()
    assert len([json.loads(line) for line in manifest]) == 4
    runs = (tmp_path / "run-off", tmp_path / "run-cpu")
    assert_same_weights(*(checkpoint_weights(run, 4) for run in runs))


@pytest.mark.slow
def test_two_processes_cache_their_own_shares_and_train_as_the_uncached_schedule(tmp_path):
    from test_train_ddp import _launch

    data = write_jsonl(tmp_path / "ann.jsonl", make_images(tmp_path, 8))  # 7 train images
    summaries = {}
    for cache in ("off", "cpu"):
        (tmp_path / cache).mkdir()
        config = tiny_config(
            tmp_path / cache / "run",
            data,
            train={"max_steps": 0, "epochs": 4, "batch_size": 1},
            data={**VARIANTS, "cache": cache},
        )
        summaries[cache] = _launch(tmp_path / cache, config)
    plain, cached = summaries["off"], summaries["cpu"]
    assert cached["step"] == 12 and cached["ranks_in_sync"]  # 3 batches x 4 epochs
    assert cached["rank_checksums"] == plain["rank_checksums"]
    assert cached["rank_data_checksums"] == plain["rank_data_checksums"]
    log = (tmp_path / "cpu" / "run" / "train.log").read_text()
    assert "up to 8 examples (2 variants)" in log  # 2 variants x 4 of the 7 images per rank
