"""Row gathers (F.embedding without padding) whose CPU backward adds the gradient rows with
`index_add_`.

torch's CPU embedding backward (`embedding_dense_backward`, 2.13) took 5.1 ms for the step's
largest lookup (77,184 ids into 3,417 rows of 50, the SASRec paper's ML-1M step) on this
project's 2-core box; `index_add_` of the same rows takes 1.7 ms and gives the same sums.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.dropout import is_compiling


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: Tensor, ids: Tensor) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.rows = table.shape[0]
        return F.embedding(ids, table)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        width = grad.shape[-1]
        table_grad = grad.new_zeros(ctx.rows, width)
        table_grad.index_add_(0, ids.reshape(-1), grad.reshape(-1, width))
        return table_grad, None


def gather_rows(table: Tensor, ids: Tensor) -> Tensor:
    """table (rows, D), ids (...) int -> (..., D): F.embedding(ids, table), with the faster
    backward when it applies (CPU, eagerly: a compiled graph keeps torch's own)."""
    if not is_compiling() and table.device.type == "cpu" and table.requires_grad \
            and torch.is_grad_enabled():
        return _GatherRows.apply(table, ids)
    return F.embedding(ids, table)
