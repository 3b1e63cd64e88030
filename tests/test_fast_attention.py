"""kernels.attention.SplitAttention (the "fast" CPU attention with its hand-written backward) against the
plain full-matrix softmax under autograd: outputs and gradients of q, k, v without dropout, and
with dropout under the very same keep masks (so kept fraction and 1 / (1 - p) scale are checked
element by element); the per-batch bias cache; bf16 close to fp32."""
from __future__ import annotations

import math

import pytest
import torch

from kernels.attention import attention, score_blocks
from kernels.dropout import fast_keep_mask
from model import BaseModel


def _inputs(b=3, h=2, n=9, d=8, seed=0, dtype=torch.float32):
    """q, k, v (b, h, n, d) and the model's causal + padding mask, rows padded by 0, 3, n - 1."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(3))
    nonpad = torch.stack([torch.arange(n) >= p for p in [0, 3, n - 1][:b]])
    return q, k, v, BaseModel._attention_mask(nonpad)


def _plain(q, k, v, mask, keeps=None, p=0.0):
    """softmax(q k^T / sqrt(d), masked), times keep / (1 - p) when keep masks are given, then
    times v; the rows of each score block use that block's mask (as the fast path draws them)."""
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~mask, -math.inf)
    weights = scores.softmax(-1)
    if keeps is not None:
        weights = weights * keeps / (1.0 - p)
    return weights @ v


def _same_keep_masks(shape, blocks, p, seed):
    """The keep masks the fast path draws after torch.manual_seed(seed), laid out as (b, h, n, n);
    keys a block skips are 0 (the causal mask hides them anyway)."""
    b, h, n = shape[0], shape[1], shape[2]
    torch.manual_seed(seed)
    keeps = torch.zeros(b, h, n, n)
    for start, end, keys in blocks:
        keeps[:, :, start:end, :keys] = fast_keep_mask(
            torch.empty(b * h, end - start, keys), p).view(b, h, end - start, keys)
    return keeps


def _grads(fn, q, k, v):
    """fn's output and the gradients of q, k, v of a weighted sum of it."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    (out * torch.linspace(-1, 1, q.shape[-1], dtype=out.dtype)).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("impl", ["fast", "fast_full"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [1, 8, 9])
def test_outputs_and_gradients_equal_the_plain_softmax_without_dropout(impl, causal, n):
    q, k, v, mask = _inputs(n=n)
    fast = _grads(lambda a, b, c: attention(a, b, c, mask, 0.0, impl, causal=causal), q, k, v)
    plain = _grads(lambda a, b, c: _plain(a, b, c, mask), q, k, v)
    for got, want in zip(fast, plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl,causal", [("fast", True), ("fast", False), ("fast_full", True)])
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_keeps_and_scales_as_the_plain_path_under_the_same_masks(impl, causal, p):
    """Re-seeding reproduces the fast path's keep masks; the plain autograd of
    softmax * keep / (1 - p) then gives the same output and the same q, k, v gradients."""
    q, k, v, mask = _inputs(n=10, seed=4)
    blocks = score_blocks(10, 10, impl, causal)
    torch.manual_seed(7)
    fast = _grads(lambda a, b, c: attention(a, b, c, mask, p, impl, causal=causal), q, k, v)
    keeps = _same_keep_masks(q.shape, blocks, p, seed=7)
    plain = _grads(lambda a, b, c: _plain(a, b, c, mask, keeps, p), q, k, v)
    for got, want in zip(fast, plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    visible = keeps[mask.expand_as(keeps)]  # the weights dropout acts on
    kept = visible.mean().item()
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / visible.numel()) + 1e-4


def test_bias_cache_is_built_once_and_shared():
    q, k, v, mask = _inputs(n=8)
    cache: dict = {}
    first = attention(q, k, v, mask, 0.0, "fast", causal=True, cache=cache)
    (biases,) = cache.values()
    second = attention(q, k, v, mask, 0.0, "fast", causal=True, cache=cache)
    assert len(cache) == 1 and next(iter(cache.values())) is biases
    assert [b.shape for b in biases] == [(3, 1, 4, 4), (3, 1, 4, 8)]
    assert torch.equal(first, second)
    torch.testing.assert_close(first, _plain(q, k, v, mask), rtol=1e-5, atol=1e-6)
    # a bias is 0 where the mask allows, -inf elsewhere
    assert torch.equal(biases[1] == 0, mask[:, :, 4:, :8])


def test_bf16_outputs_and_gradients_stay_close_to_fp32():
    q, k, v, mask = _inputs(n=12, d=16)
    fp32 = _grads(lambda a, b, c: attention(a, b, c, mask, 0.0, "fast", causal=True), q, k, v)
    bf16 = _grads(lambda a, b, c: attention(a, b, c, mask, 0.0, "fast", causal=True),
                  *(t.bfloat16() for t in (q, k, v)))
    for want, got in zip(fp32, bf16):
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        assert (got.float() - want).abs().max().item() <= 0.03 * want.abs().max().item() + 0.02
