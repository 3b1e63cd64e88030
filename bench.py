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
(input_pipeline.py) and the step only waits for them: "in wait" is that share of the step.
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
(model_to_matmul: 1.0 would be a step that is all matrix products). With several configurations (--compare_*, several --synthetic_items) each has its
own model and they take turns step by step (A B A B ...), so a load change on a shared machine
hits all of them alike and their ratios stay meaningful. The evaluation (all leave-one-out test
users, full ranking) is timed once, for the first configuration.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import bench_peers
import main
import objective
from cli_types import int_at_least, non_negative_int, positive_int
from batching import Queries, TrainBatches, leave_one_out_split
from dataset import Dataset, FeatureSchema, FeatureTables, SequenceData, TOKEN_ITEM
from evaluate import evaluate
from input_pipeline import assembly_threads, pin_batch, prefetch
from model import ATTENTION_IMPLS, BaseModel, score_blocks
from similarity import DotSimilarity

ROOT = Path(__file__).resolve().parent
ML1M_SRC = ROOT.parent / "shared" / "data" / "ml-1m"
DEFAULT_CACHE = Path("~/.cache/taac-bench")
# The SASRec paper's ML-1M configuration (Kang & McAuley 2018), used when a flag is not given.
PAPER_ML1M = dict(maxlen=200, hidden_units=50, num_blocks=2, num_heads=1, batch_size=128,
                  dropout_rate=0.2, eval_protocol="leave_one_out")
PEAK_SIZE = 2048  # square matmul that measures the machine's peak (CPU: ~0.1-0.5 s)
PEAK_SIZE_CUDA = 8192  # on a GPU 2048^2 takes microseconds: launch and sync would dominate
PRECISION_NAMES = {"none": "fp32", "bf16": "bf16"}  # --amp value -> label


# --------------------------------------------------------------------------- flags

def build_parser() -> argparse.ArgumentParser:
    p = main.build_parser()
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
    peer = p.add_argument_group("peer (bench_peers.py)")
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


def loss_case(args, spec: str) -> tuple[str, dict]:
    """"LOSS" or "LOSS:K" -> (label word, the objective's resolved flags for that case)."""
    name, _, k = spec.partition(":")
    if name not in objective.LOSSES or (k and not k.isdigit()):
        raise SystemExit(f"error: --compare_loss {spec!r}: expected LOSS or LOSS:K with LOSS "
                         f"one of {', '.join(objective.LOSSES)}")
    # in_batch is for sampled_softmax alone: the other losses' cases draw without it
    negatives = [n for n in args.negatives if n != "in_batch" or name == "sampled_softmax"]
    case = argparse.Namespace(**{**vars(args), "loss": name, "negatives": negatives or ["uniform"],
                                 "num_negatives": int(k) if k else None})
    error = objective.check_args(case)
    if error:
        raise SystemExit(f"error: --compare_loss {spec}: {error}")
    keys = ("loss", "num_negatives", "logq_correction", "negatives")
    word = name if name == "full_softmax" or (name == "bce" and case.num_negatives == 1) \
        else f"{name}:{case.num_negatives}"
    return f"loss={word}", {key: getattr(case, key) for key in keys}


# --------------------------------------------------------------------------- data

def resolve_data_dir(args) -> str | None:
    """The V1 directory to read; converts ML-1M once. None: ../shared is absent (skip)."""
    if args.data_dir:
        return args.data_dir
    if args.demo:
        return main.ensure_demo_data(args)
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


# --------------------------------------------------------------------------- FLOPs and peak

def step_flops(model: BaseModel, batch_size: int, seq_len: int, mm_rows: int | None = None) -> int:
    """Matrix-product FLOPs of one training step of `model.forward` on a (batch_size, seq_len)
    batch, counted as the model executes them; backward = 2 x forward, so step = 3 x forward.

    Counted (2 FLOPs per multiply-add), B = batch_size, L = seq_len, D = hidden:
    - item part (`_item_lookup`): itemdnn (none with "sum" fusion) on R rows, R = the whole
      catalogue (I + 1) when the dense path runs it once per step, else 3 B L (seq, pos, neg per
      token); emb_transform of each multimodal feature on the whole catalogue too, else on the
      batch's distinct item ids (`mm_rows`; None: the upper bound 3 B L);
    - user part: userdnn (none with "sum" fusion) on B + 1 rows (the profile slot of each row
      plus the shared padding user, see FeatureEmbedder.tokens);
    - per block: q, k, v, out projections and the two FFN layers (6 x 2 B L D^2), QK^T and AV
      over the score entries computed (2 x 2 B S D): S = L^2 for sdpa (padding and the causal
      upper half are computed, then masked), S = L^2 less the top-right (L/2)^2 quarter for the
      fast CPU path, which skips it (see model.attention);
    - logits: the dot similarity of pos and neg (2 x 2 B L D).
    Not counted: embedding gathers, LayerNorm, softmax, dropout, the loss, the optimizer, and
    the extra terms of a non-dot (adaptive) similarity.
    """
    f = model.features
    d, b, n = model.hidden, batch_size, seq_len
    lookups = 3 * b * n
    rows = f.item_sparse.shape[0]
    mm_r = rows
    if rows > lookups or f.item_emb.sparse:  # the per-token path of _item_lookup
        rows, mm_r = lookups, lookups if mm_rows is None else mm_rows
    mm_in = sum(lin.in_features for lin in f.emb_transform.values())
    fused = f.fusion == "dnn"  # "sum" fusion has no itemdnn/userdnn products
    item = 2 * d * (rows * (f.itemdnn.in_features if fused else 0) + mm_r * mm_in)
    user = 2 * (b + 1) * f.userdnn.in_features * d if fused else 0
    block = 6 * 2 * b * n * d * d + 2 * 2 * b * attention_scores(model, n) * d
    logits = 2 * 2 * b * n * d
    forward = item + user + len(model.attention_layers) * block + logits
    return 3 * forward


def attention_scores(model: BaseModel, seq_len: int) -> int:
    """Entries of one (L, L) score matrix that a training step's attention computes."""
    impl = model.attention_layers[0].impl
    if impl == "sdpa" or next(model.parameters()).device.type != "cpu":
        return seq_len * seq_len
    return sum((end - start) * keys
               for start, end, keys in score_blocks(seq_len, seq_len, impl, causal=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_size(device: torch.device) -> int:
    return PEAK_SIZE_CUDA if device.type == "cuda" else PEAK_SIZE


class PeakMeter:
    """The machine's matrix-multiply rate in one dtype: (size x size) @ (size x size) products,
    sampled one at a time between training steps so they meet the same load as the steps do;
    `gflops` is the median of the samples."""

    def __init__(self, device: torch.device, dtype: torch.dtype, size: int = PEAK_SIZE):
        self.device, self.dtype, self.size, self.samples = device, dtype, size, []
        self.a = torch.randn(size, size, device=device).to(dtype)
        self.b = torch.randn(size, size, device=device).to(dtype)
        for _ in range(2):
            self.a @ self.b

    def sample(self) -> None:
        _sync(self.device)
        start = time.perf_counter()
        self.a @ self.b
        _sync(self.device)
        self.samples.append(2 * self.size ** 3 / (time.perf_counter() - start) / 1e9)

    @property
    def gflops(self) -> float:
        return float(np.median(self.samples))


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int,
                size: int = PEAK_SIZE) -> float:
    """GFLOP/s: the median of `repeats` products in `dtype`, timed back to back."""
    meter = PeakMeter(device, dtype, size)
    for _ in range(repeats):
        meter.sample()
    return meter.gflops


# --------------------------------------------------------------------------- one configuration

class TimedSampler:
    """Wraps the negative sampler so the time spent in `sample` is known per step."""

    def __init__(self, sampler):
        self.sampler, self.seconds = sampler, 0.0

    def sample(self, *a, **kw):
        start = time.perf_counter()
        try:
            return self.sampler.sample(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name):
        attr = getattr(self.sampler, name)
        if name != "shared_negatives":
            return attr

        def timed(*a, **kw):  # the shared negatives of the softmax losses count as sampling
            start = time.perf_counter()
            try:
                return attr(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


class Case:
    """One configuration: its own model, optimizer, sampler and batch stream, stepped as main.py's
    loop does; `step()` -> the timings and sizes of one step."""

    def __init__(self, label: str, args, data: Dataset, split, device: torch.device):
        self.label, self.args, self.data, self.split, self.device = label, args, data, split, device
        self.amp_dtype = main.AMP_DTYPES[args.amp]
        main.set_seed(args.seed)
        self.sampler = TimedSampler(main.make_sampler(args, data, split, seed=args.seed + 1))
        self.model = main.build_model(args, data.schema.to_dict(), main.feature_tensors(data),
                                      data.itemnum, data.usernum).to(device)
        self.optimizer = main.build_optimizer(self.model, args.lr, args.adam_betas)
        if args.compile:
            main.compile_model(self.model)
        self.batches = TrainBatches(data.seqs, split.train, args.maxlen, args.batch_size,
                                    self.sampler, seed=args.seed)
        self.records: list[dict] = []
        self.losses: list[float] = []
        self._stream = self._batches()

    def _batches(self):
        epoch = 0
        while True:
            epoch += 1
            self.sampler.set_epoch(epoch)
            torch.manual_seed(self.args.seed * 100_003 + epoch)
            prepare = functools.partial(main.host_inputs, self.model,
                                        pin=self.device.type == "cuda")
            source = self.batches.epoch(epoch,
                                        assemblers=assembly_threads(self.args.input_workers))
            yield from prefetch(source, self.args.input_workers, prepare=prepare)

    def step(self) -> dict:
        self.model.train()
        self.sampler.seconds = 0.0
        t0 = time.perf_counter()
        batch = next(self._stream)
        t1 = time.perf_counter()
        tensors = main.to_device(batch, self.device)  # the workers gathered the multimodal rows
        _sync(self.device)
        t2 = time.perf_counter()
        loss = main.compute_loss(self.model, tensors, self.args, self.amp_dtype)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        _sync(self.device)
        t3 = time.perf_counter()
        self.losses.append(float(loss.detach()))  # after the timer: .item() syncs a GPU
        b, n = batch["seq"].shape
        targets = int((batch["pos"] != 0).sum())
        # with input workers the sampler runs in their thread, ahead: the loop only waits
        sampling = self.sampler.seconds if self.args.input_workers == 0 else 0.0
        return {"assembly": t1 - t0 - sampling, "sampling": sampling, "input_wait": t1 - t0,
                "h2d": t2 - t1, "model": t3 - t2, "total": t3 - t0, "seqs": b,
                "targets": targets, "device_peak_mb": self._device_peak_mb(),
                "flops": step_flops(self.model, b, n) + candidate_flops(self, batch)}

    def _device_peak_mb(self) -> float:
        """CUDA: the most memory this step allocated (reset for the next); CPU: nan (use
        peak_rss_mb of a run with this configuration alone)."""
        if self.device.type != "cuda":
            return float("nan")
        peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        torch.cuda.reset_peak_memory_stats(self.device)
        return peak

    def summary(self, peak_gflops: float, matmul: tuple[float, float]) -> dict:
        """Medians over the recorded steps; a rate is median(work per step) / median(step time),
        so it agrees with the step time shown next to it (an epoch's last, partial batch does
        not move either median)."""
        r = {k: np.array([s[k] for s in self.records], dtype=np.float64) for k in self.records[0]}
        med = lambda x: float(np.median(x))  # noqa: E731
        matmul_s, step_to_matmul = matmul
        outside = r["assembly"] + r["sampling"] + r["h2d"]
        achieved = med(r["flops"]) / med(r["total"]) / 1e9
        return {
            "label": self.label, "timed_steps": len(self.records),
            "step_ms_median": 1e3 * med(r["total"]), "model_ms_median": 1e3 * med(r["model"]),
            "assembly_ms_median": 1e3 * med(r["assembly"]),
            "sampling_ms_median": 1e3 * med(r["sampling"]), "h2d_ms_median": 1e3 * med(r["h2d"]),
            "outside_model_share": med(outside / r["total"]),
            "input_wait_share": med(r["input_wait"] / r["total"]),
            "train_seq_per_s": med(r["seqs"]) / med(r["total"]),
            "target_tokens_per_s": med(r["targets"]) / med(r["total"]),
            "model_gflops_per_step": med(r["flops"]) / 1e9,
            "achieved_gflops": achieved, "peak_gflops": peak_gflops,
            "mfu": achieved / peak_gflops,
            "matmul_ms_per_step": 1e3 * matmul_s,
            "mfu_ceiling": med(r["flops"]) / matmul_s / 1e9 / peak_gflops,
            "device_peak_mb": (float(np.max(r["device_peak_mb"])) if self.device.type == "cuda"
                               else None),
            "model_to_matmul": step_to_matmul,
            "loss_first": self.losses[0], "loss_last": self.losses[-1],
            "loss_finite": bool(np.isfinite(self.losses).all()),
        }

    def evaluate(self) -> dict:
        """Full-ranking (unless --eval_sampled) metrics of all leave-one-out test users, timed."""
        test = self.split.test if isinstance(self.split.test, Queries) else \
            leave_one_out_split(self.data.seqs).test
        a = self.args
        _sync(self.device)
        start = time.perf_counter()
        metrics = evaluate(self.model, self.data.seqs, test, self.data.itemnum, a.maxlen,
                           self.device, batch_size=a.eval_batch_size,
                           filter_seen=a.eval_filter_seen, sampled=a.eval_sampled, seed=a.seed,
                           amp_dtype=self.amp_dtype)
        _sync(self.device)
        return {"eval_seconds": time.perf_counter() - start, "eval_users": len(test.targets),
                "eval_metrics": metrics}


def candidate_flops(case: Case, batch: dict) -> int:
    """Matrix-product FLOPs of scoring the targets against shared candidates (forward +
    backward, 3 x 2 x targets x candidates x D); 0 for the baseline's per-position negatives,
    which step_flops counts as its logits."""
    if "target_index" not in batch:
        return 0
    n = len(batch["target_index"])  # "cand" holds the global and the in-batch candidates
    m = case.data.itemnum if case.args.loss == "full_softmax" else len(batch["cand"])
    return 3 * 2 * n * m * case.model.hidden


def input_throughput(args, data: Dataset, split, workers: int, batches: int,
                     pin: bool = False) -> float:
    """Sequences per second that the input pipeline alone delivers (windows, histories,
    negatives; pinned on CUDA) through `workers` background workers: `batches` batches of a
    fresh epoch 1, timed after the first (thread start, first-touch of the data)."""
    sampler = main.make_sampler(args, data, split, seed=args.seed + 1)
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


# the kernels that do a step's matrix products (linear layers, bmm of the attention)
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                        "aten::_addmm_activation"})


def matmul_seconds(case: Case, steps: int = 3) -> tuple[float, float]:
    """Medians over `steps` profiled (unrecorded) steps of the time spent in matrix products
    and of the ratio of the step's own time to it: measured in the same steps, that ratio holds
    on a machine whose load changes between the timed steps and these."""
    cuda = case.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    per_step, ratio = [], []
    for _ in range(steps):
        with profile(activities=activities) as prof:
            record = case.step()
        micros = sum(e.self_device_time_total if cuda else e.self_cpu_time_total
                     for e in prof.key_averages() if e.key in MATMUL_OPS)
        per_step.append(micros / 1e6)
        ratio.append(record["model"] / per_step[-1])
    return float(np.median(per_step)), float(np.median(ratio))


def run_cases(cases: list[Case], warmup: int, steps: int, meters=(), peer=None,
              peer_rounds: int = 1) -> None:
    """Step the cases in turn (A B C A B C ...); keep the records after `warmup` rounds; after
    each timed round every PeakMeter takes one sample. With a peer, its run() follows each
    1/peer_rounds of the timed steps, so both see the same spells of machine load."""
    peer_after = {warmup + round(steps * (r + 1) / peer_rounds) - 1 for r in range(peer_rounds)}
    for i in range(warmup + steps):
        for case in cases:
            record = case.step()
            if i >= warmup:
                case.records.append(record)
        if i >= warmup:
            for meter in meters:
                meter.sample()
        if peer is not None and i in peer_after:
            peer.run()


# --------------------------------------------------------------------------- the run

def case_grid(args) -> list[tuple[str, argparse.Namespace, int | None]]:
    """(label, args, synthetic item count) of every configuration; the first is as given."""
    attention = [args.attention_impl]
    if args.compare_attention:
        attention += [i for i in ATTENTION_IMPLS if i != args.attention_impl]
    sparse = [args.sparse_embeddings]
    if args.compare_sparse:
        sparse.append(not args.sparse_embeddings)
    amp = [args.amp] + ([a for a in main.AMP_DTYPES if a != args.amp] if args.compare_amp else [])
    items = args.synthetic_items or [None]
    losses = args.loss_cases
    compiled = [args.compile] + ([not args.compile] if args.compare_compile else [])
    grid = []
    for n, s, a, impl, c, (word, loss) in product(items, sparse, amp, attention, compiled, losses):
        show_loss = len(losses) > 1 or args.loss != "bce"
        label = " ".join(filter(None, [f"items={n}" if n else "", "sparse" if s else "dense",
                                       PRECISION_NAMES[a], f"attn={impl}",
                                       "compiled" if c else "", word if show_loss else ""]))
        grid.append((label, argparse.Namespace(**{**vars(args), "sparse_embeddings": s,
                                                  "amp": a, "attention_impl": impl,
                                                  "compile": c, **loss}), n))
    return grid


def load(args) -> dict[int | None, tuple[Dataset, object]] | None:
    """Data and split for each synthetic size (or the one real dataset, key None)."""
    if args.synthetic_items:
        out = {}
        for n in args.synthetic_items:
            data = synthetic_dataset(n, args.synthetic_users, args.maxlen, seed=args.seed)
            out[n] = (data, main.make_split(args, data))
        return out
    data_dir = resolve_data_dir(args)
    if data_dir is None:
        return None
    args.data_dir = data_dir
    data = main.load_data(args)
    return {None: (data, main.make_split(args, data))}


def ratios(summaries: list[dict]) -> dict[str, float]:
    """Step-time ratio of every configuration to the first, and the speed-up along each
    compared axis (configurations that differ in that one word of their labels)."""
    base = summaries[0]["step_ms_median"]
    out = {f"step_time {s['label']} / {summaries[0]['label']}": s["step_ms_median"] / base
           for s in summaries[1:]}
    by_words = {tuple(s["label"].split()): s["step_ms_median"] for s in summaries}
    for slow, fast in (("attn=sdpa", "attn=fast"), ("attn=fast_full", "attn=fast"),
                       ("attn=autograd", "attn=fast"),
                       ("fp32", "bf16"), ("dense", "sparse")):
        for words, ms in by_words.items():
            if fast in words:
                other = tuple(slow if w == fast else w for w in words)
                if other in by_words:
                    rest = " ".join(w for w in words if w != fast)
                    out[f"speedup {fast} vs {slow} ({rest})"] = by_words[other] / ms
    for words, ms in by_words.items():  # compiled against the same configuration in eager
        eager = tuple(w for w in words if w != "compiled")
        if eager != words and eager in by_words:
            out[f"speedup compiled vs eager ({' '.join(eager)})"] = by_words[eager] / ms
    sizes = [w for w in summaries[0]["label"].split() if w.startswith("items=")]
    for words, ms in by_words.items():  # catalogue scaling: each size against the first
        if sizes and words[0] != sizes[0]:
            base_words = (sizes[0], *words[1:])
            if base_words in by_words:
                out[f"step_time {words[0]} / {sizes[0]} ({' '.join(words[1:])})"] = \
                    ms / by_words[base_words]
    return out


def report(summaries: list[dict], extra: dict) -> str:
    cols = [("step ms", "step_ms_median", "{:.1f}"), ("model ms", "model_ms_median", "{:.1f}"),
            ("seq/s", "train_seq_per_s", "{:,.0f}"),
            ("targets/s", "target_tokens_per_s", "{:,.0f}"),
            ("GFLOP/s", "achieved_gflops", "{:.1f}"), ("MFU", "mfu", "{:.1%}"),
            ("matmul ms", "matmul_ms_per_step", "{:.1f}"), ("MFU ceil", "mfu_ceiling", "{:.1%}"),
            ("model/mm", "model_to_matmul", "{:.2f}"),
            ("outside", "outside_model_share", "{:.1%}"),
            ("in wait", "input_wait_share", "{:.1%}")]
    width = max(len(s["label"]) for s in summaries) + 2
    lines = [f"{'configuration':<{width}}" + "".join(f"{c:>12}" for c, _, _ in cols)]
    for s in summaries:
        lines.append(f"{s['label']:<{width}}" + "".join(f"{fmt.format(s[k]):>12}"
                                                        for _, k, fmt in cols))
    lines += [f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)


def report_inputs(args, inputs: dict[int, float]) -> dict:
    """--input_only: print and return the input pipeline's throughput by worker count."""
    print(f"input_seq_per_s (model skipped, batch {args.batch_size}, maxlen {args.maxlen}): "
          + ", ".join(f"{v:,.0f} with {w} workers" for w, v in inputs.items()))
    result = {"input_seq_per_s": inputs[args.input_workers],
              "input_seq_per_s_by_workers": inputs, "config": vars(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


def bench(argv=None) -> dict | None:
    """Run the benchmark; returns the results (None when the default data is absent)."""
    args = parse_args(argv)
    main.setup_logging("", rank=1)  # rank 1: warnings only, no log file
    if args.threads:
        torch.set_num_threads(args.threads)
    device = main.resolve_device(args.device, 0)
    datasets = load(args)
    if datasets is None:
        print(f"skipped: no --data_dir and {ML1M_SRC} is absent (ML-1M is read from ../shared)")
        return None
    inputs = {w: input_throughput(args, *next(iter(datasets.values())), w, args.input_batches,
                                  pin=device.type == "cuda")
              for w in sorted({0, args.input_workers})}
    if args.input_only:
        return report_inputs(args, inputs)
    grid = case_grid(args)
    args.peak_size = args.peak_size or peak_size(device)
    meters = {a.amp: PeakMeter(device, main.AMP_DTYPES[a.amp] or torch.float32, args.peak_size)
              for _, a, _ in grid}
    cases = [Case(label, a, *datasets[n], device) for label, a, n in grid]
    peer = (bench_peers.PmixerPeer(Path(args.peer_pmixer), Path(args.peer_data), args,
                                   args.peer_epochs, device.type) if args.peer_pmixer else None)
    run_cases(cases, args.warmup, args.steps, meters.values(), peer, args.peer_rounds)
    first = cases[0]
    evaluation = first.evaluate() if args.eval else {}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the profiler
    summaries = [c.summary(meters[c.args.amp].gflops, matmul_seconds(c)) for c in cases]
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
    extra = {f"peak GFLOP/s {name} (median of {args.steps} matmuls of {args.peak_size}^2 "
             "between the steps)": f"{value:.1f}"
             for name, value in result["peak_gflops_by_precision"].items()}
    extra.update(result["ratios"])
    for p in result["peers"]:
        extra[f"{p['label']} seq/s (its loop, median of {p['timed_epochs']} epochs of "
              f"{p['sequences_per_epoch']} sequences)"] = f"{p['train_seq_per_s']:,.0f}"
        speedups = bench_peers.peer_ratios(summaries, p)
        result["ratios"].update(speedups)
        extra.update(speedups)
    for w, v in inputs.items():
        extra[f"input_seq_per_s with {w} workers (model skipped)"] = f"{v:,.0f}"
    extra["input_seq_per_s / train_seq_per_s"] = inputs[args.input_workers] / summaries[0]["train_seq_per_s"]
    if evaluation:
        extra["eval_seconds"] = evaluation["eval_seconds"]
        extra["eval users / NDCG@10"] = (f"{evaluation['eval_users']} / "
                                         f"{evaluation['eval_metrics']['NDCG@10']:.4f}")
    extra["peak_rss_mb"] = result["peak_rss_mb"]
    print(report(summaries, extra))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    bench()
    sys.exit(0)
