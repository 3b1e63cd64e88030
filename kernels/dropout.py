"""Dropout from 16 random bits per element (CPU), as a multiplier in the input's dtype, and the
opaque op that draws it inside a torch.compile graph."""
from __future__ import annotations

import struct

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fast_keep_mask(like: Tensor, p: float, scale: float = 1.0) -> Tensor:
    """Dropout multiplier of like's shape and dtype: `scale` with P = 1 - p, else 0, from 16
    random bits per element.

    torch's CPU dropout draws one random float per element (bernoulli_), which at SASRec's
    attention size takes ~40% of a training step; one 64-bit random word cut into four int16
    lanes and one integer compare give the same mask about 6x cheaper. p is resolved to 1/65536
    (0.2 -> 0.199997), far below any effect on training. The compare writes like's dtype
    directly: multiplying a float tensor by a bool mask converts the mask on the fly at about
    4x the cost of a float product (and again in the backward). Under torch.compile it is drawn
    by the `taac::keep_mask` op (see `_register_keep_mask_op`).
    """
    if KEEP_MASK_OP is not None and is_compiling():
        return KEEP_MASK_OP(like.detach(), p, scale)  # a constant of the graph
    return _draw_keep_mask(like, p, scale)  # eager: without the op's dispatch (~0.2 ms a call)


def _draw_keep_mask(like: Tensor, p: float, scale: float) -> Tensor:
    """fast_keep_mask's draw itself (eager, and the body of the op)."""
    n = like.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_(-2**63, None)
    lanes = words.view(torch.int16)[:n].view(like.shape)
    threshold = round(p * 65536) - 32768  # lanes in [-32768, threshold) are dropped
    mask = torch.ge(lanes, threshold, out=torch.empty_like(like, memory_format=torch.contiguous_format))
    return mask if scale == 1.0 else mask.mul_(scale)


def _register_keep_mask_op():
    """fast_keep_mask's draw as an opaque op for torch.compile, so that
    - the graph does not break at every dropout (an in-place `random_` cannot be traced);
    - the compiled step draws eager's masks, in eager's order, with eager's speed: inductor's
      own random numbers (one scalar Philox per element on CPU) took longer than the step's
      matrix products;
    - inductor still fuses the mask's users (the multiply) into its kernels.
    The mask is drawn for a tensor (`like`, only its shape, dtype and device are read) rather
    than for a shape: graph passes merge calls with equal arguments (AOT autograd's CSE does
    not know a custom op is random), and two dropouts never share their input tensor. The
    seeded tag keeps the partitioner from recomputing (redrawing) the mask in the backward.
    None where this torch cannot tag a custom op (older releases): a compiled step then draws
    the masks eagerly between graph pieces, correct but broken at every dropout."""
    try:
        op = torch.library.custom_op("taac::keep_mask", mutates_args=(),
                                     tags=(torch.Tag.nondeterministic_seeded,))(_draw_keep_mask)
    except (AttributeError, TypeError):  # no custom_op, or no tags= yet
        return None
    op.register_fake(lambda like, p, scale: torch.empty_like(
        like, memory_format=torch.contiguous_format))
    return op


KEEP_MASK_OP = _register_keep_mask_op()
# torch.compiler.is_compiling from torch 2.3 on; without it nothing is ever compiling
is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout; on CPU with the cheap mask, elsewhere torch's own fused kernel."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    scale = 1.0 / (1.0 - p)
    if _exact_in(scale, x.dtype):  # one multiply by a mask of `scale`s and 0s
        return x * fast_keep_mask(x, p, scale)
    return x * fast_keep_mask(x, p) * scale  # e.g. 1 / 0.9 in bf16: keep the scalar's precision


def _exact_in(value: float, dtype: torch.dtype) -> bool:
    """Whether `value` keeps its fp32 value in a tensor of `dtype` (a bf16 1.25 does, 1.111 does
    not); fp32 tensors multiply by python scalars in fp32 anyway."""
    if dtype in (torch.float32, torch.float64):
        return True
    if dtype == torch.bfloat16:  # bf16 is fp32's top 16 bits
        return struct.unpack("<I", struct.pack("<f", value))[0] & 0xFFFF == 0
    return False


class Dropout(nn.Module):
    """nn.Dropout with the same semantics, using `dropout` above."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
