"""Attention on CPU: the causal-split `SplitAttention` with its hand-written backward ("fast"),
the same function op by op ("autograd", and the path under torch.compile) and the dispatch
between them and torch's sdpa (`attention`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.dropout import fast_keep_mask, is_compiling


def score_blocks(nq: int, nk: int, impl: str, causal: bool) -> list[tuple[int, int, int]]:
    """(first query, end query, keys) blocks that the fast path computes of an (nq, nk) score
    matrix. With a causal mask, query rows [0, L/2) need keys [0, L/2) only, so "fast" skips the
    top-right quarter, where every weight is 0 ("autograd" too); "fast_full" (and a non-causal
    mask) computes it all. benchmarks.flops.step_flops counts FLOPs from the same blocks."""
    if causal and impl in ("fast", "autograd") and nq == nk and nq >= 2:
        half = nq // 2
        return [(0, half, half), (half, nq, nq)]
    return [(0, nq, nk)]


def attention_bias(mask: Tensor, blocks: list[tuple[int, int, int]], dtype: torch.dtype
                   ) -> list[Tensor]:
    """mask (B, 1, nq, nk) bool -> one contiguous additive bias (B, 1, end - start, keys) per
    score block: 0 where a query may attend, -inf elsewhere. Built in the dtype the scores have
    (so autocast does not convert it per call) and, through `cache`, once per batch."""
    zero, minus_inf = torch.zeros((), dtype=dtype), torch.full((), -math.inf, dtype=dtype)
    return [torch.where(mask[:, :, start:end, :keys], zero.to(mask.device),
                        minus_inf.to(mask.device)).contiguous()
            for start, end, keys in blocks]


class SplitAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) with dropout, times v, over the score blocks of
    `score_blocks`, with a hand-written backward.

    Autograd of the plain code would, per block, keep the scores and softmax outputs, build
    full-size zero gradients for every slice of q, k, v and the concatenation, and run
    softmax's backward out of place. Here the forward softmax runs in place, dropout keeps two
    (N, m, keys) tensors (the weights w and the dropped weights w * keep) instead of a mask and
    a product, and the backward writes dS = w * keep * dW' - w * r in two in-place passes, with
    r = rowsum(dY * Y) taken from the (N, L, d) output (the softmax identity FlashAttention
    uses) instead of an (N, m, keys) product; dk, dv add their blocks' rows in place.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, blocks: list[tuple[int, int, int]],
                biases: list[Tensor], dropout_p: float) -> Tensor:
        """q (N, nq, d), k, v (N, nk, d), biases [(N, m, keys)] -> (N, nq, d)."""
        scale = q.shape[-1] ** -0.5
        out = q.new_empty(q.shape)
        saved = []
        for (start, end, keys), bias in zip(blocks, biases):
            w = torch.baddbmm(bias, q[:, start:end], k[:, :keys].transpose(1, 2), alpha=scale)
            torch.ops.aten._softmax.out(w, -1, False, out=w)  # in place: w is ours alone
            wd = w * fast_keep_mask(w, dropout_p) if dropout_p > 0.0 else w
            out[:, start:end] = torch.bmm(wd, v[:, :keys])
            saved += [w, wd]
        if dropout_p > 0.0:
            out.mul_(1.0 / (1.0 - dropout_p))  # on (L, d), not on the (L, L) weights
        ctx.blocks, ctx.dropout_p, ctx.scale = blocks, dropout_p, scale
        ctx.save_for_backward(q, k, v, out, *saved)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, *saved = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # r_i = sum_j dW_ij w_ij = dY_i . Y_i: an (N, nq, 1) vector, no (nq, nk) product
        r = (grad_out * out).sum(-1, keepdim=True)
        if ctx.dropout_p > 0.0:
            grad_out = grad_out * (1.0 / (1.0 - ctx.dropout_p))
        dq, dk, dv = [], None, None
        for i, (start, end, keys) in enumerate(ctx.blocks):
            w, wd = saved[2 * i], saved[2 * i + 1]
            g = grad_out[:, start:end]
            dv = _add_leading_rows(dv, torch.bmm(wd.transpose(1, 2), g))
            ds = torch.bmm(g, v[:, :keys].transpose(1, 2))  # dW' = dY v^T, before the mask
            ds.mul_(wd).addcmul_(w, r[:, start:end], value=-1.0)  # w * (keep * dW' - r)
            dq.append(torch.bmm(ds, k[:, :keys]).mul_(ctx.scale))
            dk = _add_leading_rows(dk, torch.bmm(ds.transpose(1, 2), q[:, start:end])
                                   .mul_(ctx.scale))
        dq = dq[0] if len(dq) == 1 else torch.cat(dq, 1)
        dk, dv = (t if t.shape[1] == k.shape[1] else F.pad(t, (0, 0, 0, k.shape[1] - t.shape[1]))
                  for t in (dk, dv))  # F.pad copies even when there is nothing to pad
        return dq, dk, dv, None, None, None


def _add_leading_rows(acc: Tensor | None, part: Tensor) -> Tensor:
    """(N, a, d) and (N, b, d) -> the longer, with the shorter added into its first rows.
    Fresh bmm outputs accumulated this way stay contiguous: a bmm written into a strided view
    of a larger gradient runs as one small matmul per batch entry, many times slower."""
    if acc is None:
        return part
    if acc.shape[1] < part.shape[1]:
        acc, part = part, acc
    acc[:, :part.shape[1]] += part
    return acc


def autograd_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float,
                       causal: bool) -> Tensor:
    """"fast"'s function op by op under autograd, the bias built per call (the implementation
    before `SplitAttention`): kept as --attention_impl autograd to measure the hand-written
    backward against, and the CPU path under torch.compile, where inductor fuses the bias,
    softmax and dropout passes that `SplitAttention` would hide from it.
    q, k, v (B, H, L, d), mask (B, 1, L, L) bool -> (B, H, L, d)."""
    b, h, nq, d = q.shape
    nk = k.shape[2]
    q, k, v = (t.reshape(b * h, t.shape[2], d) for t in (q, k, v))
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, -math.inf)
    bias = bias.expand(b, h, nq, nk).reshape(b * h, nq, nk)  # a view when h == 1
    outs = []
    for start, end, keys in score_blocks(nq, nk, "autograd", causal):
        scores = torch.baddbmm(bias[:, start:end, :keys], q[:, start:end],
                               k[:, :keys].transpose(1, 2), alpha=d ** -0.5)
        weights = scores.softmax(-1)
        if dropout_p > 0.0:
            weights = weights * fast_keep_mask(weights, dropout_p)
        outs.append(torch.bmm(weights, v[:, :keys]))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
    if dropout_p > 0.0:
        out = out * (1.0 / (1.0 - dropout_p))
    return out.view(b, h, nq, d)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float,
              impl: str = "sdpa", causal: bool = False, cache: dict | None = None) -> Tensor:
    """q, k, v (B, H, L, d); mask (B, 1, L, L) bool, True = may attend -> (B, H, L, d).

    "sdpa" is torch's scaled_dot_product_attention, as the baseline (and on GPUs always: its
    fused kernels are the fast path there). "fast" computes the same function on CPU with the
    same dropout semantics (on the attention weights, kept weights scaled by 1 / (1 - p)) in
    `SplitAttention`: the cheap dropout mask, the 1 / (1 - p) applied to the (L, d) output
    instead of the (L, L) weights, a backward without full-size temporaries. `causal` promises
    that the mask hides every key after its query, so "fast" may skip scores (see
    `score_blocks`); "fast_full" computes them anyway (kept to measure what the skip is worth).
    `cache` (a dict per batch) keeps the additive biases, so the blocks of a model share them.
    """
    if impl == "sdpa" or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if impl == "autograd" or is_compiling():
        return autograd_attention(q, k, v, mask, dropout_p, causal)
    b, h, nq, d = q.shape
    nk = k.shape[2]
    blocks = score_blocks(nq, nk, impl, causal)
    key = (tuple(blocks), q.dtype, mask.shape)
    biases = cache.get(key) if cache is not None else None
    if biases is None:
        biases = attention_bias(mask, blocks, q.dtype)
        if cache is not None:
            cache[key] = biases
    # (B, 1, m, keys) -> (B H, m, keys): a view when h == 1, a copy per call otherwise
    biases = [bias.expand(b, h, *bias.shape[2:]).reshape(b * h, *bias.shape[2:])
              for bias in biases]
    q, k, v = (t.reshape(b * h, t.shape[2], d) for t in (q, k, v))
    with torch.autocast("cpu", enabled=False):  # every tensor is already in the scores' dtype
        out = SplitAttention.apply(q, k, v, blocks, biases, dropout_p)
    return out.view(b, h, nq, d)
