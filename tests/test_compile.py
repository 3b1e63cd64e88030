"""--compile: the compiled model computes the eager model's loss and gradients on a tiny model.

torch.compile traces the self-attention blocks (dynamo), the dropout masks as the opaque
`taac::keep_mask` op, and differentiates the graph (AOT autograd). Equal losses with dropout on
also show that every dropout drew its own mask (graph passes once merged equal-looking draws). The suite runs that with the "aot_eager" backend (the
same trace, no C++ code generation: seconds); TAAC_TEST_INDUCTOR=1 uses inductor, main.py's
backend, which compiles C++ on CPU (minutes on a busy 2-core machine, so opt-in), and is skipped
cleanly where inductor cannot compile (no C++ compiler)."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch._dynamo.utils import counters

import bench
from training import flags, setup, step
from inputs.batching import TrainBatches

BACKEND = "inductor" if os.environ.get("TAAC_TEST_INDUCTOR") == "1" else "aot_eager"


def _loss_and_grads(compiled: bool, impl: str, dropout: str):
    args = flags.parse_args(["--maxlen", "8", "--hidden_units", "8", "--num_blocks", "2",
                            "--device", "cpu", "--attention_impl", impl,
                            "--dropout_rate", dropout])
    data = bench.synthetic_dataset(50, 20, 8)
    split = setup.make_split(args, data)
    sampler = setup.make_sampler(args, data, split, seed=1)
    batches = TrainBatches(data.seqs, split.train, args.maxlen, 8, sampler, seed=0)
    batch = step.to_device(next(iter(batches.epoch(1))), torch.device("cpu"))
    setup.set_seed(0)
    model = setup.build_model(args, data.schema.to_dict(), setup.feature_tensors(data),
                             data.itemnum, data.usernum)
    if compiled:
        setup.compile_model(model, backend=BACKEND)
    torch.manual_seed(5)  # the same dropout draws in both runs
    loss = step.compute_loss(model, batch, args, None)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl,dropout", [("fast", "0.2"), ("sdpa", "0.0")])
def test_compiled_model_has_the_eager_loss_and_gradients(impl, dropout, monkeypatch):
    if BACKEND == "inductor":
        if shutil.which(os.environ.get("CXX", "g++")) is None:
            pytest.skip("inductor needs a C++ compiler on CPU; none found")
        # inductor draws its own random numbers unless told to use torch's: same dropout masks
        monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    torch._dynamo.reset()
    eager_loss, eager_grads = _loss_and_grads(False, impl, dropout)
    counters.clear()
    loss, grads = _loss_and_grads(True, impl, dropout)
    # one graph: a break (the dropout draw once broke it at every dropout) runs the rest eagerly
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys() and len(grads) > 5
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_without_the_mask_op_compile_still_has_the_eager_loss(monkeypatch):
    """A torch too old to tag a custom op gets no `taac::keep_mask`: the compiled step then draws
    the masks eagerly between graph pieces, and still computes eager's loss and gradients."""
    from kernels import dropout
    monkeypatch.setattr(dropout, "KEEP_MASK_OP", None)
    torch._dynamo.reset()
    eager_loss, eager_grads = _loss_and_grads(False, "fast", "0.2")
    counters.clear()
    loss, grads = _loss_and_grads(True, "fast", "0.2")
    assert counters["graph_break"]  # the draw's in-place random_ breaks the graph
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    torch._dynamo.reset()
