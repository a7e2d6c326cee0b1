"""The pack's MODEL: cross-attention to the one-token condition skips the query side, and on a
CPU attention runs through SDPA (``attention_pytorch``), not ComfyUI's chunked sub-quadratic
fallback; the result is the same up to float rounding."""

from __future__ import annotations

import torch


def _sample(host, model, vae, encoder):
    g = torch.Generator().manual_seed(0)
    source = torch.rand(1, 64, 64, 3, generator=g)
    exemplar = torch.rand(1, 40, 40, 3, generator=g)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 24:48] = 1
    positive, negative, _ = host.run(
        "PaintByExample.ExemplarEncode", encoder=encoder, exemplar=exemplar
    )
    image, *_ = host.run(
        "PaintByExample.InpaintSampler",
        model=model,
        vae=vae,
        positive=positive,
        negative=negative,
        image=source,
        mask=mask,
        seed=3,
        steps=3,
        similarity=5.0,
        resolution=64,
    )
    return image


def test_cpu_model_attention_goes_through_sdpa_with_the_same_result(host, loaded, monkeypatch):
    import comfy.ldm.modules.attention as attention

    builder = host.module("nodes.model_builder")
    model, vae, encoder = loaded
    options = model.model_options["transformer_options"]
    assert options["optimized_attention_override"] is builder.sdpa_attention
    assert attention.optimized_attention is attention.attention_sub_quad  # ComfyUI's CPU choice

    calls = {"sdpa": 0, "sub_quad": 0}
    sdpa, sub_quad = attention.attention_pytorch, attention.attention_sub_quad

    def count(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(attention, "attention_pytorch", count("sdpa", sdpa))
    fast = _sample(host, model, vae, encoder)
    assert calls["sdpa"] > 0

    # the same model with ComfyUI's own CPU attention (no override): equal to float rounding
    plain = model.clone()
    del plain.model_options["transformer_options"]["optimized_attention_override"]
    monkeypatch.setattr(attention, "optimized_attention", count("sub_quad", sub_quad))
    before = calls["sdpa"]
    reference = _sample(host, plain, vae, encoder)
    assert calls["sdpa"] == before and calls["sub_quad"] > 0
    diff = (fast - reference).abs().max().item()
    assert diff < 1e-4, diff


def test_cross_attention_to_one_token_skips_the_query_side_with_the_same_result(host, loaded):
    model, vae, encoder = loaded
    patched = [key for key in model.object_patches if key.endswith(".attn2.forward")]
    layers = [
        m for name, m in model.model.diffusion_model.named_modules() if name.endswith("attn2")
    ]
    assert layers and len(patched) == len(layers)
    calls = []
    hooks = [
        part.register_forward_hook(lambda *_: calls.append(1))
        for attn in layers
        for part in (attn.to_q, attn.to_k)
    ]
    try:
        fast = _sample(host, model, vae, encoder)
        assert calls == []  # no query or key projection ran
        plain = model.clone()
        for key in patched:
            del plain.object_patches[key]
        reference = _sample(host, plain, vae, encoder)
        assert calls  # the layers' own forward computes them
    finally:
        for hook in hooks:
            hook.remove()
    diff = (fast - reference).abs().max().item()
    assert diff < 1e-4, diff
