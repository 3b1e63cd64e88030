"""Training throughput, model FLOP utilisation, evaluation time and memory of main.py's model.

    python bench.py [--data_dir DIR] [main.py's flags] [--steps 30] [--warmup 5] [--json OUT.json]
    python bench.py --amp bf16                      # bf16 autocast; MFU against a bf16 peak
    python bench.py --compare_attention             # every --attention_impl, same run
    python bench.py --compare_amp --compare_sparse  # fp32 vs bf16, dense vs sparse, same run
    python bench.py --compare_loss sampled_softmax:1024 full_softmax   # objectives vs bce, same run
    python bench.py --synthetic_items 50000 5000000 --sparse_embeddings --compare_sparse --no-eval

Data: --data_dir, else ML-1M from ../shared/data/ml-1m converted once by prepare_data.py into
<--cache_dir or ~/.cache/taac-bench>/ml-1m (outside the repo; skipped with exit 0 when ../shared is
absent), or --demo (main.py's built-in demo), or --synthetic_items N (a feature-less dataset built
in memory, see `synthetic_dataset`). Configuration: main.py's flags, with the SASRec paper's ML-1M
values as defaults (PAPER_ML1M) and the leave-one-out protocol.

Every step is timed in parts: batch assembly (windows, histories), negative sampling and the
host-to-device copy ("outside the model"), then forward + backward + optimizer step. With
--input_workers N (main.py's flag, default 1) the batches are built ahead in background threads
(inputs/input_pipeline.py) and the step only waits for them: "in wait" is that share of the step.
input_seq_per_s is the input pipeline alone (model skipped), with 0 and N workers;
--input_only measures just that (e.g. at the competition's --maxlen 101 --batch_size 2048). Numbers are
medians over the timed steps after --warmup steps. MFU = step_flops (the model's matrix-product
FLOPs, forward + backward) / median step time / the machine's matmul peak in the step's precision;
the peak is the median of one square matmul (2048 on CPU, 8192 on CUDA) timed after every round
of steps, so it sees the same load as the steps. MFU ceiling = the same FLOPs / the time the
step's matrix products alone take (torch.profiler over a few extra steps) / the peak: the MFU the
step would reach if everything else in it (softmax, masks, dropout, LayerNorm, gathers, the
optimizer) took no time, i.e. what small-matrix efficiency alone allows. "model/mm" is the
forward + backward + optimizer time over the matrix-product time of the same profiled steps
(model_to_matmul: 1.0 would be a step that is all matrix products). "floor/mm"
(floor_to_matmul) adds to the matrix products only the work torch does in one kernel each and no
rearrangement of torch ops removes (random bits, LayerNorm, softmax, embedding backward:
benchmarks/flops.py FLOOR_OPS; floor_ms_per_step): a lower bound on model/mm for a step built from
torch's kernels. With several configurations (--compare_*, several --synthetic_items) each has its
own model and they take turns step by step (A B A B ...), so a load change on a shared machine
hits all of them alike and their ratios stay meaningful. The evaluation (all leave-one-out test
users, full ranking) is timed once, for the first configuration.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks import peers as bench_peers
from benchmarks.cases import PRECISION_NAMES, Case, case_grid, loss_case, run_cases
from benchmarks.flops import PEAK_SIZE, PEAK_SIZE_CUDA, PeakMeter, peak_size, profile_step
from benchmarks.input_speed import input_throughput, report_inputs
from benchmarks.report import ratios, report, report_extras
from objectives import objective
from dataset import Dataset, FeatureSchema, FeatureTables, SequenceData, TOKEN_ITEM
from training import flags as train_flags
from training import setup
from training.cli_types import int_at_least, non_negative_int, positive_int
from similarity import DotSimilarity

ROOT = Path(__file__).resolve().parent
ML1M_SRC = ROOT.parent / "shared" / "data" / "ml-1m"
DEFAULT_CACHE = Path("~/.cache/taac-bench")
# The SASRec paper's ML-1M configuration (Kang & McAuley 2018), used when a flag is not given.
PAPER_ML1M = dict(maxlen=200, hidden_units=50, num_blocks=2, num_heads=1, batch_size=128,
                  dropout_rate=0.2, eval_protocol="leave_one_out")


# --------------------------------------------------------------------------- flags

def build_parser() -> argparse.ArgumentParser:
    p = train_flags.build_parser()
    p.description = __doc__.splitlines()[0]
    g = p.add_argument_group("benchmark")
    g.add_argument("--steps", type=positive_int, default=30, help="timed training steps per configuration")
    g.add_argument("--warmup", type=non_negative_int, default=5, help="untimed steps first (allocator, caches)")
    g.add_argument("--json", default=None, help="write the results here as JSON")
    g.add_argument("--demo", action="store_true",
                   help="main.py's built-in demo dataset (--demo_users, --demo_items), not ML-1M")
    g.add_argument("--synthetic_items", type=int_at_least(2), nargs="+", default=None,
                   help="feature-less in-memory data with an N-item catalogue; several values "
                        "are measured in the same run")
    g.add_argument("--synthetic_users", type=positive_int, default=6040,
                   help="users of the synthetic data (ML-1M's count)")
    g.add_argument("--compare_attention", action="store_true",
                   help="also measure the other --attention_impl choices in the same run")
    g.add_argument("--compare_sparse", action="store_true",
                   help="also measure the other --sparse_embeddings setting in the same run")
    g.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                   help="time a full-ranking evaluation of all leave-one-out test users")
    g.add_argument("--compare_loss", nargs="+", default=[], metavar="LOSS[:K]",
                   help="also measure these objectives in the same run, each LOSS or LOSS:K "
                        "(--num_negatives), e.g. sampled_softmax:1024 full_softmax gbce:256; "
                        "--negatives and the other objective flags are shared (in_batch by "
                        "sampled_softmax cases only)")
    g.add_argument("--compare_compile", action="store_true",
                   help="also measure the other --compile setting in the same run (the compile "
                        "itself happens in the warmup steps; give enough --warmup)")
    g.add_argument("--compare_amp", action="store_true",
                   help="also measure the other --amp setting in the same run")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads (default: torch's); 1 is steadier on a busy box")
    g.add_argument("--input_batches", type=positive_int, default=20,
                   help="batches timed for input_seq_per_s (the input pipeline alone, model "
                        "skipped), with 0 and with --input_workers workers")
    g.add_argument("--input_only", action="store_true",
                   help="measure only the input pipeline (e.g. at the competition's batch 2048)")
    g.add_argument("--peak_size", type=positive_int, default=None,
                   help="side of the square matmul that measures the peak "
                        f"(default {PEAK_SIZE} on CPU, {PEAK_SIZE_CUDA} on CUDA)")
    peer = p.add_argument_group("peer (benchmarks/peers.py)")
    peer.add_argument("--peer_pmixer", default=None, metavar="DIR",
                      help="also time pmixer/SASRec.pytorch's own training loop, per epoch, "
                           "interleaved with our steps, and print our speed-up over it; DIR is "
                           "the python/ folder of a checkout (git clone "
                           "https://github.com/pmixer/SASRec.pytorch)")
    peer.add_argument("--peer_data", default=str(ML1M_SRC / "sasrec" / "ml-1m.txt"),
                      help="the peer's 'user item' file (the same data as --data_dir)")
    peer.add_argument("--peer_epochs", type=int_at_least(2), default=3,
                      help="epochs of each peer process; its first epoch (start-up) is not timed")
    peer.add_argument("--peer_rounds", type=positive_int, default=3,
                      help="peer processes, one after each 1/N of our timed steps")
    p.set_defaults(**PAPER_ML1M)  # argparse keeps any value the user passes
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.sparse_embeddings and args.l2_emb:
        raise SystemExit("--l2_emb cannot be combined with --sparse_embeddings (see main.py)")
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    if args.peer_epochs > bench_peers.MAX_EPOCHS:
        raise SystemExit(f"--peer_epochs at most {bench_peers.MAX_EPOCHS}: pmixer's main.py "
                         "evaluates at epoch 20, which is not training time")
    if args.peer_pmixer:
        args.peer_pmixer = str(bench_peers.check_pmixer_dir(args.peer_pmixer))
        if args.peer_rounds > args.steps:
            raise SystemExit(f"--peer_rounds {args.peer_rounds} needs at least as many --steps "
                             f"(the peer runs after each 1/N of them), got {args.steps}")
    args.loss_cases = [loss_case(args, f"{args.loss}:{args.num_negatives}" if
                                 args.num_negatives else args.loss)]
    args.loss_cases += [loss_case(args, spec) for spec in args.compare_loss]
    error = objective.check_args(args)
    if error:
        raise SystemExit(f"error: {error}")
    return args


# --------------------------------------------------------------------------- data

def resolve_data_dir(args) -> str | None:
    """The V1 directory to read; converts ML-1M once. None: ../shared is absent (skip)."""
    if args.data_dir:
        return args.data_dir
    if args.demo:
        return setup.ensure_demo_data(args)
    out = Path(args.cache_dir or DEFAULT_CACHE).expanduser() / "ml-1m"
    if (out / "seq.jsonl").exists():
        return str(out)
    if not ML1M_SRC.is_dir():
        return None
    import prepare_data
    status = prepare_data.main(["movielens-1m", "--src", str(ML1M_SRC), "--out", str(out)])
    if status:
        raise SystemExit(f"prepare_data.py movielens-1m failed (status {status})")
    return str(out)


def synthetic_dataset(num_items: int, num_users: int, maxlen: int, seed: int = 0) -> Dataset:
    """A feature-less Dataset built directly in memory: no files, no parse, seconds at any size.

    Each user gets U(maxlen / 2, 2 * maxlen) items (no profile token) drawn uniformly from the
    whole catalogue, so the batches hold the same number of tokens whatever `num_items` is and
    only the catalogue-dependent costs (tables, optimizer state, unique rows) change. Feature
    tables have zero columns; every item 1..num_items exists.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(3, maxlen // 2), 2 * maxlen + 1, size=num_users)
    total = int(lengths.sum())
    seqs = SequenceData(
        tok_id=rng.integers(1, num_items + 1, size=total, dtype=np.int32),
        tok_type=np.full(total, TOKEN_ITEM, np.int8),
        tok_action=np.zeros(total, np.int32),
        line_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        line_user=np.arange(1, num_users + 1, dtype=np.int32),
        has_profile=np.zeros(num_users, bool))
    empty = lambda n, *shape, dtype=np.int32: np.zeros((n + 1, *shape), dtype)  # noqa: E731
    tables = FeatureTables(empty(num_items, 0), empty(num_items, 0, 1),
                           empty(num_items, 0, dtype=np.float32), empty(num_users, 0),
                           empty(num_users, 0, 1), empty(num_users, 0, dtype=np.float32), mm={})
    valid = np.ones(num_items + 1, bool)
    valid[0] = False
    return Dataset(FeatureSchema(), seqs, tables, num_items, num_users, valid,
                   stats={"synthetic": True})


# --------------------------------------------------------------------------- the run


def load(args) -> dict[int | None, tuple[Dataset, object]] | None:
    """Data and split for each synthetic size (or the one real dataset, key None)."""
    if args.synthetic_items:
        out = {}
        for n in args.synthetic_items:
            data = synthetic_dataset(n, args.synthetic_users, args.maxlen, seed=args.seed)
            out[n] = (data, setup.make_split(args, data))
        return out
    data_dir = resolve_data_dir(args)
    if data_dir is None:
        return None
    args.data_dir = data_dir
    data = setup.load_data(args)
    return {None: (data, setup.make_split(args, data))}


def bench(argv=None) -> dict | None:
    """Run the benchmark; returns the results (None when the default data is absent)."""
    args = parse_args(argv)
    setup.setup_logging("", rank=1)  # rank 1: warnings only, no log file
    if args.threads:
        torch.set_num_threads(args.threads)
    device = setup.resolve_device(args.device, 0)
    datasets = load(args)
    if datasets is None:
        print(f"skipped: no --data_dir and {ML1M_SRC} is absent (ML-1M is read from ../shared)")
        return None
    inputs = {w: input_throughput(args, *next(iter(datasets.values())), w, args.input_batches,
                                  pin=device.type == "cuda")
              for w in sorted({0, args.input_workers})}
    if args.input_only:
        return report_inputs(args, inputs)
    result = measure(args, device, datasets, inputs)
    print(report(result["cases"], report_extras(args, result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


def measure(args, device: torch.device, datasets: dict, inputs: dict[int, float]) -> dict:
    """Step every configuration in turn (and the peer between), time the evaluation once, and
    gather bench's result: the first configuration's keys at the top, every one under "cases"."""
    grid = case_grid(args)
    args.peak_size = args.peak_size or peak_size(device)
    meters = {a.amp: PeakMeter(device, train_flags.AMP_DTYPES[a.amp] or torch.float32, args.peak_size)
              for _, a, _ in grid}
    cases = [Case(label, a, *datasets[n], device) for label, a, n in grid]
    peer = (bench_peers.PmixerPeer(Path(args.peer_pmixer), Path(args.peer_data), args,
                                   args.peer_epochs, device.type) if args.peer_pmixer else None)
    run_cases(cases, args.warmup, args.steps, meters.values(), peer, args.peer_rounds)
    first = cases[0]
    evaluation = first.evaluate() if args.eval else {}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the profiler
    summaries = [c.summary(meters[c.args.amp].gflops, profile_step(c)) for c in cases]
    result = {**summaries[0], **evaluation,
              "peak_gflops_by_precision": {PRECISION_NAMES[a]: m.gflops for a, m in meters.items()},
              "peak_rss_mb": peak_rss_mb,
              "input_seq_per_s": inputs[args.input_workers],
              "input_seq_per_s_by_workers": inputs,
              "cases": summaries, "ratios": ratios(summaries),
              "peers": [peer.summary()] if peer else [],
              "data": {"users": first.data.seqs.num_lines, "items": first.data.itemnum,
                       "tokens": int(len(first.data.seqs.tok_id)),
                       "train_sequences": len(first.split.train)},
              "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "device": str(device), "cpu": platform.processor() or platform.machine(),
                          "similarity_counted": isinstance(first.model.similarity, DotSimilarity)},
              "config": vars(args)}
    for p in result["peers"]:
        result["ratios"].update(bench_peers.peer_ratios(summaries, p))
    return result


if __name__ == "__main__":
    bench()
    sys.exit(0)
