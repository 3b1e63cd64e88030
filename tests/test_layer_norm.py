"""kernels.layer_norm: torch's LayerNorm with the weight/bias reduction on one thread."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels import layer_norm as ln


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _grads(fn, x, w, b, dy):
    y = fn(x, w, b)
    inputs = [t for t in (x, w, b) if t.requires_grad]
    return y, torch.autograd.grad(y, inputs, dy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_grad", [True, False])
def test_function_is_torchs_layer_norm_on_one_thread_bit_for_bit(two_threads, dtype, x_grad):
    torch.manual_seed(0)
    x = torch.randn(16, 33, 50, dtype=dtype, requires_grad=x_grad)
    w, b = torch.randn(50, requires_grad=True), torch.randn(50, requires_grad=True)
    dy = torch.randn(16, 33, 50, dtype=dtype)
    ours, ours_grads = _grads(lambda *a: ln._LayerNorm.apply(*a, 1e-8), x, w, b, dy)
    with ln.one_thread():
        ref, ref_grads = _grads(lambda x, w, b: F.layer_norm(x, (50,), w, b, 1e-8), x, w, b, dy)
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)
    assert len(ours_grads) == len(ref_grads) == 2 + x_grad
    for a, r in zip(ours_grads, ref_grads):
        assert a.dtype == r.dtype and torch.equal(a, r)
    if dtype == torch.float32:  # and within summation-order noise of the multi-threaded one
        # (with bf16 inputs torch's reductions on one or two threads are both ~1 off an fp64
        # reference here, so they are compared bit for bit with one thread only)
        _, multi = _grads(lambda x, w, b: F.layer_norm(x, (50,), w, b, 1e-8), x, w, b, dy)
        for a, r in zip(ours_grads, multi):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_one_thread_restores_the_thread_count_after_an_error(two_threads):
    with pytest.raises(RuntimeError), ln.one_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


def _backward_name(width: int, grad: bool = True) -> str:
    norm = ln.LayerNorm(width, eps=1e-8)
    with torch.set_grad_enabled(grad):
        y = norm(torch.randn(4, 5, width, requires_grad=True))
    return type(y.grad_fn).__name__ if y.grad_fn is not None else "none"


def test_the_one_thread_reduction_runs_only_where_torchs_is_slow(two_threads):
    assert [ln.slow_parameter_reduction(w) for w in (50, 60, 100, 32, 48, 64, 128)] == \
        [True] * 3 + [False] * 4
    if not ln._OPENMP:
        pytest.skip("torch is not built with OpenMP: the plain path everywhere")
    assert _backward_name(50) == "_LayerNormBackward"  # ours
    assert _backward_name(64).startswith("NativeLayerNormBackward")
    assert _backward_name(50, grad=False) == "none"
    torch.set_num_threads(1)
    assert _backward_name(50).startswith("NativeLayerNormBackward")


def test_module_keeps_nn_layer_norms_parameters_and_checkpoints(two_threads):
    torch.manual_seed(0)
    ours, ref = ln.LayerNorm(50, eps=1e-8), nn.LayerNorm(50, eps=1e-8)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 7, 50)
    assert torch.equal(ours(x), ref(x))
