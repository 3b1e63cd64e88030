"""Multimodal tables at scale: conversion rate, peak RSS while converting and while training,
and the training step's time with a large table against without it, on generated data.

    python -m benchmarks.multimodal --items 250000 1000000 --dim 1024 [--users 20000] [--steps 30]

For each catalogue size N: a V1 directory with N items (make_large_data.write_large_v1) plus a
V2-style `mm_emb/emb_82_<dim>_parquet/` (string anonymous_cid, list<float> emb, one vector for
~87 % of the items and some for creatives that are no item). Each measurement runs in its own
process, so its peak RSS (ru_maxrss) is its own:
- convert: layouts.mm.convert_mm_table alone -> seconds, rows/s, source MB/s, peak RSS, and the
  RSS before it started (imports + the item indexer, which grows with N but is not the table);
- train: the cached dataset, the model, --steps steps (after --warmup) of main.py's step with
  and without --mm_emb_id 82 -> median step ms, peak RSS, RSS after loading.
Output goes to --out (default: a new folder under /tmp), deleted afterwards unless --keep.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FID = "82"
COVERAGE = 0.87  # the text families' coverage (data-format-v2.md §6)


def write_mm_parquet(folder: Path, num_items: int, dim: int, seed: int, parts: int = 4,
                     rows_per_group: int = 8192) -> dict:
    """Vectors for a random ~87 % of the items (OID = RAW_ITEM_BASE + RID, as a string) and 1 %
    extra creatives outside the indexer; written chunk by chunk (memory: one row group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from make_large_data import RAW_ITEM_BASE
    rng = np.random.default_rng(seed)
    rids = np.flatnonzero(rng.random(num_items) < COVERAGE) + 1
    extra = RAW_ITEM_BASE + num_items + 1 + np.arange(num_items // 100)
    oids = rng.permutation(np.concatenate([RAW_ITEM_BASE + rids, extra]))
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("anonymous_cid", pa.string()), ("emb", pa.list_(pa.float32()))])
    for p, part in enumerate(np.array_split(oids, parts)):
        with pq.ParquetWriter(folder / f"part-{p:05d}-bench.parquet", schema,
                              compression="none") as w:
            for s in range(0, len(part), rows_per_group):
                chunk = part[s:s + rows_per_group]
                values = rng.standard_normal(len(chunk) * dim, dtype=np.float32)
                offsets = np.arange(len(chunk) + 1, dtype=np.int32) * dim
                emb = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
                w.write_table(pa.table({"anonymous_cid": pa.array(chunk.astype(str)), "emb": emb},
                                       schema=schema))
    return {"vectors": len(oids), "items_with_vector": len(rids),
            "source_bytes": sum(f.stat().st_size for f in folder.iterdir())}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_parts_mb() -> dict[str, float]:
    """Current RssAnon (heap: batches, weights) and RssFile (mapped file pages: the table)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child_convert(data_dir: Path, out: Path) -> dict:
    from layouts import safe_pickle
    from layouts import mm
    indexer = safe_pickle.load(data_dir / "indexer.pkl")
    before = _rss_mb()
    info = mm.convert_mm_table(data_dir, FID, indexer["i"], len(indexer["i"]), out)
    source = mm.find_source(data_dir, FID).path
    src_bytes = sum(f.stat().st_size for f in source.iterdir())
    # ru_maxrss covers the whole process; the conversion's own part is peak - rss_before
    return {"seconds": info.seconds, "rows_per_s": (info.covered + info.unmapped) / info.seconds,
            "source_mb_per_s": src_bytes / 1e6 / info.seconds, "covered": info.covered,
            "table_bytes": out.stat().st_size, "rss_before_mb": before, "peak_rss_mb": _peak_mb()}


def child_train(data_dir: Path, cache: Path, with_mm: bool, steps: int, warmup: int) -> dict:
    import torch

    from training import flags, setup, step as train_step
    from inputs.batching import TrainBatches
    from dataset import load_dataset
    from training.optim import build_optimizer
    torch.set_num_threads(2)
    args = flags.parse_args(["--device", "cpu", "--batch_size", "128", "--maxlen", "101"])
    data = load_dataset(data_dir, cache, [FID] if with_mm else [])
    setup.set_seed(0)
    split = setup.make_split(args, data)
    sampler = setup.make_sampler(args, data, split, seed=1)
    model = setup.build_model(args, data.schema.to_dict(), setup.feature_tensors(data),
                             data.itemnum, data.usernum)
    optimizer = build_optimizer(model, args.lr, args.adam_betas)
    after_load = _rss_mb()
    batches = TrainBatches(data.seqs, split.train, args.maxlen, args.batch_size, sampler, seed=0)
    times, distinct, peaks = [], [], {"RssAnon": 0.0, "RssFile": 0.0}
    device = torch.device("cpu")
    for i, batch in zip(range(warmup + steps), batches.epoch(1)):
        lookups = np.stack([batch["seq"] * (batch["token_type"] == 1), batch["pos"], batch["neg"]])
        distinct.append(len(np.unique(lookups)))
        start = time.perf_counter()
        loss = train_step.compute_loss(model, train_step.model_inputs(model, batch, device), args, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        peaks = {k: max(peaks[k], v) for k, v in _rss_parts_mb().items()}
    return {"step_ms_median": 1000 * float(np.median(times)), "steps": len(times),
            "distinct_items_per_batch": float(np.mean(distinct)),
            "peak_rss_anon_mb": peaks["RssAnon"], "peak_rss_file_mb": peaks["RssFile"],
            "rss_after_load_mb": after_load, "peak_rss_mb": _peak_mb(),
            "mm_dims": data.schema.mm_dims}


def _child(*argv: str) -> dict:
    # A fresh process per measurement, so one's peak RSS cannot leak into the next's.
    out = subprocess.run([sys.executable, "-m", "benchmarks.multimodal", *argv], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(n: int, args, root: Path) -> dict:
    from make_large_data import write_large_v1
    data_dir, cache = root / f"items_{n}", root / f"cache_{n}"
    start = time.perf_counter()
    write_large_v1(data_dir, args.users, 90, n, seed=0)
    src = write_mm_parquet(data_dir / "mm_emb" / f"emb_{FID}_{args.dim}_parquet", n, args.dim, 0)
    result = {"items": n, "dim": args.dim, **src, "generate_seconds": time.perf_counter() - start}
    result["convert"] = _child("--_convert", str(data_dir), str(root / f"table_{n}.npy"))
    (root / f"table_{n}.npy").unlink()
    for name, flag in (("train_without_mm", "0"), ("train_with_mm", "1")):
        _child("--_fill_cache", str(data_dir), str(cache), flag)
        result[name] = _child("--_train", str(data_dir), str(cache), flag, str(args.steps),
                              str(args.warmup))
    shutil.rmtree(data_dir), shutil.rmtree(cache)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, nargs="+", default=[250_000, 1_000_000],
                   help="catalogue sizes to measure")
    p.add_argument("--dim", type=int, default=1024, help="vector dimension of feature 82")
    p.add_argument("--users", type=int, default=20_000, help="users of the generated sequences")
    p.add_argument("--steps", type=int, default=30, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--out", default=None, help="work folder (default: a new one under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_mm-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        results = [measure(n, args, root) for n in args.items]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return {"results": results}


def _dispatch(argv: list[str]) -> None:
    """The child processes' entry: one measurement, its JSON on the last stdout line."""
    from dataset import load_dataset
    kind, rest = argv[0], argv[1:]
    if kind == "--_convert":
        out = child_convert(Path(rest[0]), Path(rest[1]))
    elif kind == "--_fill_cache":
        load_dataset(rest[0], rest[1], [FID] if rest[2] == "1" else [])
        out = {}
    else:
        out = child_train(Path(rest[0]), Path(rest[1]), rest[2] == "1", int(rest[3]), int(rest[4]))
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("--_"):
        _dispatch(sys.argv[1:])
    else:
        main()
