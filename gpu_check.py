"""GPU check: a few hundred training steps in fp32 and in bf16 autocast, then an evaluation.

    python gpu_check.py [--data_dir DIR] [--steps 300] [main.py's flags]   # on a CUDA machine
    python gpu_check.py --device cpu --steps 20                              # CPU smoke test

Prints, per precision: training throughput (sequences/s, median step), MFU against a matmul peak
of that precision and its ceiling (bench.py: the matrix products alone), peak GPU memory
(torch.cuda.max_memory_allocated, training and evaluation together), the evaluation's seconds and
NDCG@10, and whether every loss and metric is finite.
Both runs start from the same seed and see the same batches, so their losses compare. Data: the
built-in demo dataset unless --data_dir. Exit status 0 when everything is finite, 1 otherwise or
when CUDA is asked for and absent. A few minutes on an H100/H200, most of it start-up.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks import cases, flops
from training import flags as train_flags, setup
from objectives import objective
from training.cli_types import non_negative_int, positive_int

PRECISIONS = {"fp32": "none", "bf16": "bf16"}  # label -> --amp


class NoCuda(RuntimeError):
    """CUDA was asked for on a machine without it."""


def parse_args(argv=None) -> argparse.Namespace:
    p = train_flags.build_parser()
    p.description = __doc__.splitlines()[0]
    g = p.add_argument_group("gpu check")
    g.add_argument("--steps", type=positive_int, default=300, help="timed training steps per precision")
    g.add_argument("--warmup", type=non_negative_int, default=20,
                   help="untimed steps first (kernels, allocator)")
    g.add_argument("--json", default=None, help="write the results here as JSON")
    g.add_argument("--peak_size", type=positive_int, default=None,
                   help="side of the square matmul that measures the peak "
                        f"(default {flops.PEAK_SIZE} on CPU, {flops.PEAK_SIZE_CUDA} on CUDA)")
    p.set_defaults(device="cuda", num_epochs=1)
    args = p.parse_args(argv)
    error = objective.check_args(args)
    if error:
        p.error(error)
    return args


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NoCuda("no CUDA device on this machine: gpu_check.py is for GPUs "
                     "(for a CPU smoke test: python gpu_check.py --device cpu --steps 20)")
    return setup.resolve_device(name, 0)


def run_precision(label: str, args, data, split, device: torch.device) -> dict:
    """Train args.steps steps at one precision, evaluate; -> the numbers of that run."""
    a = argparse.Namespace(**{**vars(args), "amp": PRECISIONS[label]})
    gc.collect()  # the previous precision's Case (a generator holds it in a cycle) and its memory
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    case = cases.Case(label, a, data, split, device)
    cases.run_cases([case], args.warmup, args.steps)
    evaluation = case.evaluate()
    memory = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
              else float("nan"))  # read before the peak's matrices are allocated
    peak = flops.matmul_peak(device, train_flags.AMP_DTYPES[a.amp] or torch.float32, 10,
                             args.peak_size or flops.peak_size(device))
    summary = case.summary(peak, flops.profile_step(case))
    metrics = evaluation["eval_metrics"]
    return {
        "train_seq_per_s": summary["train_seq_per_s"], "step_ms_median": summary["step_ms_median"],
        "outside_model_share": summary["outside_model_share"], "mfu": summary["mfu"],
        "mfu_ceiling": summary["mfu_ceiling"],
        "peak_gflops": peak,
        "peak_memory_mb": memory,
        "eval_seconds": evaluation["eval_seconds"], "ndcg10": metrics["NDCG@10"],
        "loss_first": case.losses[0], "loss_last20": float(np.mean(case.losses[-20:])),
        "finite": bool(np.isfinite(case.losses).all()
                       and all(math.isfinite(metrics[k]) for k in ("HR@10", "NDCG@10", "AUC"))),
    }


def report(results: dict[str, dict]) -> str:
    cols = [("seq/s", "train_seq_per_s", "{:,.0f}"), ("step ms", "step_ms_median", "{:.2f}"),
            ("MFU", "mfu", "{:.1%}"), ("MFU ceil", "mfu_ceiling", "{:.1%}"),
            ("outside", "outside_model_share", "{:.0%}"),
            ("peak MB", "peak_memory_mb", "{:,.0f}"), ("eval s", "eval_seconds", "{:.2f}"),
            ("NDCG@10", "ndcg10", "{:.4f}"), ("loss", "loss_last20", "{:.4f}"),
            ("finite", "finite", "{}")]
    lines = [f"{'precision':<10}" + "".join(f"{c:>10}" for c, _, _ in cols)]
    for label, r in results.items():
        lines.append(f"{label:<10}" + "".join(f"{fmt.format(r[k]):>10}" for _, k, fmt in cols))
    if {"fp32", "bf16"} <= results.keys():
        speedup = results["bf16"]["train_seq_per_s"] / results["fp32"]["train_seq_per_s"]
        lines.append(f"bf16 / fp32 throughput: {speedup:.2f}x")
    return "\n".join(lines)


def check(argv=None) -> dict[str, dict]:
    """Run both precisions; -> {precision: numbers}. Raises NoCuda without a GPU."""
    args = parse_args(argv)
    setup.setup_logging("", rank=1)  # warnings only; this script prints its own table
    device = _device(args.device)
    data = setup.load_data(args)
    split = setup.make_split(args, data)
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"device {device}{name}; "
          f"{split.train.lines.size} training sequences, {data.itemnum} items; "
          f"{args.warmup} + {args.steps} steps per precision, batch {args.batch_size}, "
          f"maxlen {args.maxlen}, hidden {args.hidden_units}")
    results = {label: run_precision(label, args, data, split, device) for label in PRECISIONS}
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "config": vars(args)},
                                              indent=2, default=str))
    return results


def cli() -> int:
    try:
        results = check()
    except NoCuda as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not all(r["finite"] for r in results.values()):
        print("FAILED: a loss or metric is not finite", file=sys.stderr)
        return 1
    print("ok: all losses and metrics finite")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
