"""input_pipeline: the background worker yields exactly the synchronous batches, in order, for
two epochs and after a mid-epoch resume; errors reach the loop; stopping early ends the worker."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from inputs.batching import Ranges, TrainBatches
from dataset import SequenceData, TOKEN_ITEM
from inputs.input_pipeline import Prefetcher, assembly_threads, pin_batch, prefetch
from sampling import build_sampler


def _seqs(users=37, items=50, seed=0) -> SequenceData:
    """Users with 2..15 items each, no profiles."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 16, size=users)
    total = int(lengths.sum())
    return SequenceData(tok_id=rng.integers(1, items + 1, size=total).astype(np.int32),
                        tok_type=np.full(total, TOKEN_ITEM, np.int8),
                        tok_action=np.zeros(total, np.int32),
                        line_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                        line_user=np.arange(1, users + 1, dtype=np.int32),
                        has_profile=np.zeros(users, bool))


def _batches(seqs, sampler_seed=1) -> TrainBatches:
    off = np.asarray(seqs.line_offsets)
    ranges = Ranges(np.arange(len(off) - 1), off[:-1].copy(), off[1:].copy())
    sampler = build_sampler(50, None, None, sampler_seed, True, 0.5, "power_law", 0.75,
                            "constant", 0)
    return TrainBatches(seqs, ranges, maxlen=8, batch_size=5, sampler=sampler, seed=3)


def _run(batches, epochs, workers):
    """As main.py runs an epoch: N workers = N - 1 assembly threads + the prefetch worker."""
    out = []
    for epoch in epochs:
        batches.sampler.set_epoch(epoch)
        source = batches.epoch(epoch, assemblers=assembly_threads(workers))
        out += list(prefetch(source, workers, state=batches.sampler.state_dict))
    return out


def _assert_same(got, want):
    assert len(got) == len(want) and len(want) > 2
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), b[k])


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_yields_the_synchronous_batches_in_order_for_two_epochs(workers):
    """workers 3: two threads assemble ahead, the negatives are drawn in order."""
    seqs = _seqs()
    want = _run(_batches(seqs), [1, 2], workers=0)
    sync_sampler = _batches(seqs)
    _run(sync_sampler, [1, 2], workers=0)
    background = _batches(seqs)
    _assert_same(_run(background, [1, 2], workers), want)
    # after a finished epoch the worker is done: the sampler is where the synchronous one is
    assert background.sampler.state_dict() == sync_sampler.sampler.state_dict()


def test_a_mid_epoch_resume_from_the_consumed_state_continues_exactly():
    """Stop after 3 batches of epoch 2 (the worker has run ahead), restore a fresh sampler from
    `consumed_state` and continue from batch 3: the rest of the synchronous epoch follows."""
    seqs = _seqs()
    want = _run(_batches(seqs), [1, 2], workers=0)
    first = _batches(seqs)
    got = _run(first, [1], workers=1)
    first.sampler.set_epoch(2)
    stream = Prefetcher(first.epoch(2), depth=4, state=first.sampler.state_dict)
    got += [next(stream) for _ in range(3)]
    saved = stream.consumed_state
    stream.close()
    assert saved != first.sampler.state_dict()  # the worker was ahead of the loop
    resumed = _batches(seqs, sampler_seed=99)  # another seed: the loaded state must win
    resumed.sampler.load_state_dict(saved)
    got += list(prefetch(resumed.epoch(2, start=3), 1))
    _assert_same(got, want)


def test_worker_errors_reach_the_loop_and_early_stops_end_the_worker():
    def failing():
        yield {"a": np.zeros(2)}
        raise ValueError("bad record in line 7")

    stream = prefetch(failing(), 1)
    assert np.array_equal(next(stream)["a"], np.zeros(2))
    with pytest.raises(ValueError, match="line 7"):
        next(stream)

    before = threading.active_count()
    stream = Prefetcher(({"i": np.array([i])} for i in range(10_000)), depth=2)
    assert next(stream)["i"][0] == 0 and next(stream)["i"][0] == 1
    stream.close()
    assert threading.active_count() <= before
    with pytest.raises(StopIteration):
        next(stream)
    with pytest.raises(ValueError, match="depth"):
        Prefetcher([], depth=0)
    with pytest.raises(ValueError, match="input_workers"):
        prefetch([], -1)


def test_pinned_batches_hold_the_same_values():
    batch = {"seq": np.arange(6).reshape(2, 3), "neg": np.ones((2, 3), np.int64)}
    if not torch.cuda.is_available():  # pinning needs a CUDA runtime; the values are the point
        pytest.skip("no CUDA: pin_memory is unavailable")
    pinned = pin_batch(batch)
    assert all(t.is_pinned() for t in pinned.values())
    assert torch.equal(pinned["seq"], torch.from_numpy(batch["seq"]))


def test_assembly_threads_give_the_synchronous_batches_and_stop_cleanly():
    seqs = _seqs()
    want = list(_batches(seqs).epoch(1))
    threaded = _batches(seqs)
    _assert_same(list(threaded.epoch(1, assemblers=2)), want)
    # a mid-epoch resume: the sampler state after 2 batches, then batches 2.. with threads
    first = _batches(seqs)
    stream = first.epoch(1)
    next(stream), next(stream)
    resumed = _batches(seqs)
    resumed.sampler.load_state_dict(first.sampler.state_dict())
    _assert_same(list(resumed.epoch(1, start=2, assemblers=4)), want[2:])
    # an early stop: the generator closed with work still queued ends its threads
    early = _batches(seqs).epoch(1, assemblers=2)
    next(early)
    early.close()
    assert not any(t.name.startswith("batch-assembly") for t in threading.enumerate())
