"""LayerNorm whose CPU backward reduces the weight and bias gradients on one thread where torch's
multi-threaded reduction is slow.

torch's CPU LayerNorm backward (2.13) sums the weight and bias gradients over the rows with
per-thread buffers of `width` floats laid end to end. When a row of them is not a whole number
of 64-byte cache lines (width not a multiple of 16), two threads write the same line: on this
project's 2-core box, at the SASRec paper's width 50 and 25,728 rows, that reduction takes
2.5 ms on 2 threads against 0.46 on one (widths 40, 56, 60, 72, 100 alike; 32, 48, 64, 80, 128
are not hit). The input gradient has no such problem, so only the reduction runs on one thread.
The numbers are torch's own kernel's (the same calls), so values and gradients are unchanged.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.dropout import is_compiling

# torch.set_num_threads is per calling thread under OpenMP; elsewhere it may rebuild a pool
_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()


def slow_parameter_reduction(width: int) -> bool:
    """Whether torch's multi-threaded LayerNorm weight/bias reduction shares cache lines
    between threads at this width (fp32 rows of 64-byte lines)."""
    return width % 16 != 0


@contextlib.contextmanager
def one_thread():
    """Run the enclosed torch ops on the calling thread alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _LayerNorm(torch.autograd.Function):
    """torch's LayerNorm forward and backward kernels, with the weight and bias gradients
    computed on one thread."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        shape = (x.shape[-1],)
        dx = dweight = dbias = None
        if need_x:
            dx = torch.ops.aten.native_layer_norm_backward(
                dy, x, shape, mean, rstd, weight, bias, [True, False, False])[0]
        if need_weight or need_bias:
            with one_thread():
                _, dweight, dbias = torch.ops.aten.native_layer_norm_backward(
                    dy, x, shape, mean, rstd, weight, bias, [False, need_weight, need_bias])
        return dx, dweight, dbias, None


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """F.layer_norm over the last dimension; the one-thread reduction where it pays (CPU
    training on more than one thread at an affected width, eagerly: a compiled graph gets
    inductor's own kernels)."""
    if (not is_compiling() and x.device.type == "cpu" and _OPENMP and torch.is_grad_enabled()
            and weight.requires_grad and torch.get_num_threads() > 1
            and slow_parameter_reduction(x.shape[-1])):  # is_compiling first: dynamo stops there
        return _LayerNorm.apply(x, weight, bias, eps)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and checkpoints) over the last dimension, through
    `layer_norm` above."""

    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__(width, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)
