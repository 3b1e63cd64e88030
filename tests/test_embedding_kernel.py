"""kernels.embedding.gather_rows: F.embedding with an index_add_ backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.embedding import gather_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_rows_has_embeddings_values_and_gradients(dtype):
    torch.manual_seed(0)
    table = torch.randn(37, 6, dtype=dtype, requires_grad=True)
    ids = torch.randint(0, 37, (3, 50))
    ids[0, :10] = 5  # one row gathered many times: its gradient is a long sum
    grad = torch.randn(3, 50, 6, dtype=dtype)
    out = gather_rows(table, ids)
    assert out.grad_fn is not None and type(out.grad_fn).__name__ == "_GatherRowsBackward"
    ref = F.embedding(ids, table)
    assert torch.equal(out, ref)
    ours, = torch.autograd.grad(out, table, grad)
    theirs, = torch.autograd.grad(ref, table, grad)
    assert ours.dtype == dtype and ours.shape == table.shape
    tol = 1e-6 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    # by hand: row 5's gradient is the sum of the gradients of every slot that gathered it
    by_hand = grad.float()[ids == 5].sum(0)
    torch.testing.assert_close(ours[5].float(), by_hand, rtol=tol, atol=tol)
    unused = torch.bincount(ids.flatten(), minlength=37) == 0
    assert unused.any() and (ours[unused] == 0).all()


def test_gather_rows_without_grad_is_plain_embedding():
    table = torch.randn(5, 3)
    ids = torch.tensor([[0, 4, 4]])
    out = gather_rows(table, ids)
    assert out.grad_fn is None and torch.equal(out, table[ids])
