"""The input pipeline's own throughput (batches assembled, negatives drawn, pinned on CUDA;
the model skipped), by number of input workers."""
from __future__ import annotations

import json
import time
from pathlib import Path

from dataset import Dataset
from inputs.batching import TrainBatches
from inputs.input_pipeline import assembly_threads, pin_batch, prefetch
from training import setup

def input_throughput(args, data: Dataset, split, workers: int, batches: int,
                     pin: bool = False) -> float:
    """Sequences per second that the input pipeline alone delivers (windows, histories,
    negatives; pinned on CUDA) through `workers` background workers: `batches` batches of a
    fresh epoch 1, timed after the first (thread start, first-touch of the data)."""
    sampler = setup.make_sampler(args, data, split, seed=args.seed + 1)
    source = TrainBatches(data.seqs, split.train, args.maxlen, args.batch_size, sampler,
                          seed=args.seed)
    stream = prefetch(_repeat_epochs(source, assembly_threads(workers)), workers,
                      prepare=pin_batch if pin else None)
    iterator = iter(stream)
    next(iterator)
    start, seqs = time.perf_counter(), 0
    for _ in range(batches):
        seqs += len(next(iterator)["seq"])
    seconds = time.perf_counter() - start
    if hasattr(stream, "close"):
        stream.close()
    return seqs / seconds


def _repeat_epochs(batches: TrainBatches, assemblers: int = 0):
    epoch = 0
    while True:
        epoch += 1
        batches.sampler.set_epoch(epoch)
        yield from batches.epoch(epoch, assemblers=assemblers)


def report_inputs(args, inputs: dict[int, float]) -> dict:
    """--input_only: print and return the input pipeline's throughput by worker count."""
    print(f"input_seq_per_s (model skipped, batch {args.batch_size}, maxlen {args.maxlen}): "
          + ", ".join(f"{v:,.0f} with {w} workers" for w, v in inputs.items()))
    result = {"input_seq_per_s": inputs[args.input_workers],
              "input_seq_per_s_by_workers": inputs, "config": vars(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result

