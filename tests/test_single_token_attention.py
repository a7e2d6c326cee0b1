"""Cross-attention to a one-token condition: the value alone, the query side skipped."""

from __future__ import annotations

import torch

from exemplar_core.editor import Editor
from exemplar_core.model import SingleTokenCrossAttention, use_single_token_cross_attention


def _unet_inputs(tokens: int = 1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 8, 8, generator=g)
    condition = torch.randn(2, tokens, 32, generator=g)
    return x, torch.tensor(500), condition


def _attn2_layers(unet):
    return [m for name, m in unet.named_modules() if name.endswith("attn2")]


def test_same_output_as_full_attention_without_the_query_side(tiny_model):
    unet = tiny_model.unet
    x, t, condition = _unet_inputs()
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=condition).sample
        use_single_token_cross_attention(unet)
        calls = []
        for attn in _attn2_layers(unet):
            for part in (attn.to_q, attn.to_k):
                part.register_forward_hook(lambda *_: calls.append(1))
        got = unet(x, t, encoder_hidden_states=condition).sample
    assert _attn2_layers(unet) and all(
        isinstance(a.processor, SingleTokenCrossAttention) for a in _attn2_layers(unet)
    )
    assert calls == []  # no query or key projection of a cross-attention layer ran
    assert (got - expected).abs().max() <= 1e-5


def test_several_tokens_fall_back_to_the_full_attention_exactly(tiny_model):
    unet = tiny_model.unet
    x, t, condition = _unet_inputs(tokens=3)
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=condition).sample
        use_single_token_cross_attention(unet)
        use_single_token_cross_attention(unet)  # idempotent: no processor wraps another
        got = unet(x, t, encoder_hidden_states=condition).sample
    assert all(
        not isinstance(a.processor.fallback, SingleTokenCrossAttention) for a in _attn2_layers(unet)
    )
    assert torch.equal(got, expected)


def test_the_editor_samples_with_single_token_cross_attention(tiny_model):
    editor = Editor(tiny_model, device="cpu", progress=False)
    layers = _attn2_layers(editor.model.unet)
    assert layers and all(isinstance(a.processor, SingleTokenCrossAttention) for a in layers)
    self_attention = [m for n, m in editor.model.unet.named_modules() if n.endswith("attn1")]
    assert not any(isinstance(a.processor, SingleTokenCrossAttention) for a in self_attention)


def test_training_forwards_keep_the_full_attention_and_every_gradient(tiny_model):
    """An editor built on a model being trained (validation, subject mode's prior samples) must
    not change its training: with autograd on, the query and key projections run and get their
    gradients, so the optimiser (weight decay included) sees every parameter as before."""
    unet = tiny_model.unet
    Editor(tiny_model, device="cpu", progress=False)  # installs the processors on this model
    tiny_model.requires_grad_(True)  # as the trainer gives training back after validation
    x, t, condition = _unet_inputs()
    unet(x, t, encoder_hidden_states=condition).sample.square().mean().backward()
    for attn in _attn2_layers(unet):
        assert attn.to_q.weight.grad is not None and attn.to_k.weight.grad is not None
