"""Median training-step time of main.py's model on several data directories, in one process.

    python -m benchmarks.data_dirs DIR_A DIR_B [--steps 10] [main.py's flags, e.g. --sparse_embeddings]

Steps alternate A B A B ..., so a load change on a shared machine hits every directory alike and
the ratios stay meaningful (bench.py --synthetic_items does the same for feature-less data; this
one keeps each directory's features, e.g. V2 data at 50,000 against 4.8 M items). The time is the
model's forward + backward + optimizer step on a batch assembled beforehand.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from training import flags as train_flags, setup, step as train_step
from inputs.batching import TrainBatches
from training.optim import build_optimizer


def stepper(data_dir: str, flags: list[str]):
    """-> (item count, a function that runs one timed training step and returns its seconds)."""
    args = train_flags.parse_args(["--data_dir", data_dir, *flags])
    device = setup.resolve_device(args.device, 0)
    data = setup.load_data(args)
    split = setup.make_split(args, data)
    sampler = setup.make_sampler(args, data, split, seed=args.seed + 1)
    model = setup.build_model(args, data.schema.to_dict(), setup.feature_tensors(data),
                             data.itemnum, data.usernum).to(device)
    optimizer = build_optimizer(model, args.lr, args.adam_betas)
    batches = TrainBatches(data.seqs, split.train, args.maxlen, args.batch_size, sampler,
                           seed=args.seed).epoch(0)
    amp = train_flags.AMP_DTYPES[args.amp]

    def step() -> float:
        batch = train_step.to_device(next(batches), device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # timing only: the benchmark, not the training loop
        start = time.perf_counter()
        loss = train_step.compute_loss(model, batch, args, amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return data.itemnum, step


def run(argv=None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dirs", nargs="+", help="data directories (V1 or V2), compared in turn")
    p.add_argument("--steps", type=int, default=10, help="timed steps per directory")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    args, flags = p.parse_known_args(argv)
    runs = [(d, *stepper(d, flags)) for d in args.data_dirs]
    times: dict[str, list[float]] = {d: [] for d in args.data_dirs}
    for k in range(args.warmup + args.steps):
        for d, _, step in runs:
            dt = step()
            if k >= args.warmup:
                times[d].append(dt)
    medians = {d: statistics.median(t) for d, t in times.items()}
    first = medians[args.data_dirs[0]]
    for d, n, _ in runs:
        print(f"{d}: {n:,} items, median step {medians[d] * 1000:.0f} ms over {args.steps} steps "
              f"({medians[d] / first:.2f}x the first)")
    return medians


if __name__ == "__main__":
    run(sys.argv[1:])
