"""Training batches assembled ahead of the model by background workers, in order.

    for batch in prefetch(batches.epoch(epoch), workers=1, depth=4, state=sampler.state_dict):
        ...

A worker thread runs the batch iterator (window assembly, histories, negative sampling: numpy,
which releases the GIL for its array work) and hands the batches to the training loop through a
bounded queue, so the next batch is built while the model computes the current one. It runs
whatever iterator it is given (`TrainBatches.epoch`, or any loss's own batching), in the
iterator's own order: the batches are exactly the synchronous ones for a given (seed, epoch).

Exact resume: the worker runs up to `depth` batches ahead, so the sampler's random state when the
loop stands at batch i is not the sampler's state now. With `state` (e.g. sampler.state_dict),
the worker records the state right after producing each batch, and `Prefetcher.consumed_state`
is the state as of the last batch the loop has taken: what a mid-epoch checkpoint must save.
At the end of an epoch the worker has finished, so the sampler itself is in step again.

`prepare` turns each batch into the step's host inputs off the training loop's thread (main.py:
page-locked tensors for the GPU copy and the batch's multimodal rows from the host tables).
`workers` above 1 run the same single ordered stream (a sampler draws from one random stream, so
batch i + 1's negatives depend on batch i's); `prepare` then runs on the extra threads. The iterator and its sampler must not use torch's global random
generator: it is shared with the training loop's dropout.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

_DONE = object()  # end of the stream


class _Failure:
    """An exception raised in the worker, re-raised in the consumer's thread."""

    def __init__(self, error: BaseException):
        self.error = error


def pin_batch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy arrays -> page-locked tensors, so step.to_device's copy is asynchronous."""
    return {k: torch.from_numpy(v).pin_memory() for k, v in batch.items()}


class Prefetcher:
    """Iterates `source` in a background thread, `depth` items ahead, yielding them in order.

    Closing it (or leaving a `for` loop over it early, or garbage collection) stops the worker:
    it never blocks forever on a full queue. An exception in the worker is raised here, at the
    position of the item that failed.
    """

    def __init__(self, source: Iterable, depth: int = 4, state: Callable[[], Any] | None = None,
                 transform: Callable[[Any], Any] | None = None, transform_workers: int = 0):
        self._thread = None
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._state, self.consumed_state = state, None
        self._pool = ThreadPoolExecutor(transform_workers) if transform and transform_workers else None
        self._transform = transform
        self._thread = threading.Thread(target=self._run, args=(iter(source),), daemon=True,
                                        name="input-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        """Blocks while the queue is full; False once the consumer has stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator) -> None:
        try:
            for item in source:
                state = self._state() if self._state is not None else None
                if self._transform is not None:
                    item = (self._pool.submit(self._transform, item) if self._pool
                            else self._transform(item))
                if not self._put((item, state)):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, not swallowed
            self._put(_Failure(e))

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        if self._thread is None:
            raise StopIteration
        got = self._queue.get()
        if got is _DONE or isinstance(got, _Failure):
            self.close()
            if isinstance(got, _Failure):
                raise got.error
            raise StopIteration
        item, self.consumed_state = got
        return item.result() if self._pool else item

    def close(self) -> None:
        """Stop the worker and wait for it (it finishes the item it is building)."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a worker waiting on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self):
        self.close()


def prefetch(source: Iterable, workers: int, depth: int | None = None,
             state: Callable[[], Any] | None = None,
             prepare: Callable[[Any], Any] | None = None) -> Iterable:
    """`source` as it is with workers 0 (synchronous, `prepare` applied inline), else through a
    `Prefetcher` with `depth` (default 2 x workers + 2) batches ahead. `prepare` (e.g.
    step.host_inputs: pinning, multimodal gathers) runs on the workers too: in the one worker
    after each batch, or with N > 1 on the N - 1 extra threads."""
    if workers < 0:
        raise ValueError(f"--input_workers must be >= 0, got {workers}")
    if workers == 0:
        return map(prepare, source) if prepare else source
    return Prefetcher(source, depth or 2 * workers + 2, state=state,
                      transform=prepare, transform_workers=workers - 1)


def assembly_threads(workers: int) -> int:
    """Threads that assemble batches ahead (TrainBatches.epoch's `assemblers`) for N input
    workers: all but the prefetch worker, which draws the negatives in batch order."""
    return max(workers - 1, 0)
