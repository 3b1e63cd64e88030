"""Throughput of SmartNegativeSampler.sample at ML-1M size.

itemnum 3416, Zipf-like synthetic counts, batch 128 x maxlen 200 target slots, ~165 history
items per user. Prints negatives/s (median of timed calls after warm-up) per configuration,
and the mean popularity percentile of the negatives ("neg pct", 50 = uniform).

    python -m benchmarks.sampler [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from training.cli_types import positive_int
from sampling import SmartNegativeSampler

ITEMNUM, BATCH, MAXLEN, HIST_MEAN = 3416, 128, 200, 165
CONFIGS = {  # name -> (popular_ratio, popularity_source, dense membership bitmap)
    "uniform (ratio 0)": (0.0, "counts", True),
    "0.3 counts": (0.3, "counts", True),
    "0.3 power_law": (0.3, "power_law", True),
    # The path large catalogues (TAAC) take, where a B x N bitmap would be too big.
    "0.3 counts, sorted": (0.3, "counts", False),
}


def synthetic_counts(rng: np.random.Generator) -> np.ndarray:
    """-> (ITEMNUM+1,) float64 Zipf-like counts (exponent 1) over shuffled ids, index 0 unused.

    Shuffled so power_law (which assumes low ids are popular) does not match the counts.
    """
    counts = np.zeros(ITEMNUM + 1)
    counts[1:] = np.floor(50_000 / np.arange(1, ITEMNUM + 1) ** 1.0) + 1
    counts[1:] = rng.permutation(counts[1:])
    return counts


def synthetic_batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> hist_items (T,), hist_offsets (BATCH+1,), target_mask (BATCH, MAXLEN) all True."""
    lengths = rng.integers(HIST_MEAN - 35, HIST_MEAN + 36, size=BATCH)
    hists = [rng.choice(np.arange(1, ITEMNUM + 1), size=n, replace=False) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.concatenate(hists).astype(np.int64), offsets, np.ones((BATCH, MAXLEN), dtype=bool)


def bench(sampler: SmartNegativeSampler, batch: tuple, repeats: int, warmup: int = 3) -> float:
    """-> median seconds per sample() call."""
    for _ in range(warmup):
        sampler.sample(*batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sampler.sample(*batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=20, help="timed calls per configuration")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    counts, batch = synthetic_counts(rng), synthetic_batch(rng)
    n_slots = int(batch[2].sum())
    print(f"itemnum={ITEMNUM} batch={BATCH}x{MAXLEN} ({n_slots} slots), history ~{HIST_MEAN}/user")
    print(f"{'config':<22}{'ms/call':>10}{'negatives/s':>15}{'neg pct':>9}")
    results = {}
    for name, (ratio, source, dense) in CONFIGS.items():
        sampler = SmartNegativeSampler(ITEMNUM, item_counts=counts, popularity_source=source, popular_ratio=ratio)
        if not dense:
            sampler.dense_table_max = 0
        seconds = bench(sampler, batch, args.repeats)
        results[name] = n_slots / seconds
        pct = sampler.epoch_stats()["neg_popularity"]
        print(f"{name:<22}{seconds * 1e3:>10.2f}{results[name]:>15,.0f}{pct:>9.1f}")
    return results


if __name__ == "__main__":
    main()
