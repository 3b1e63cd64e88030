"""bench.py's configurations: each `Case` owns a model, optimizer, sampler and batch stream and
steps as main.py's loop does, timed in parts; `case_grid` expands the --compare_* flags into
cases and `run_cases` steps them in turn (A B A B ...) so machine load hits all alike."""
from __future__ import annotations

import argparse
import functools
import time
from itertools import product

import numpy as np
import torch

from benchmarks.flops import StepProfile, _sync, step_flops
from dataset import Dataset
from evaluation.evaluate import evaluate
from inputs.batching import Queries, TrainBatches, leave_one_out_split
from inputs.input_pipeline import assembly_threads, prefetch
from model import ATTENTION_IMPLS
from objectives import objective
from training import flags as train_flags
from training import optim, setup
from training import step as train_step

PRECISION_NAMES = {"none": "fp32", "bf16": "bf16"}  # --amp value -> label


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
        self.amp_dtype = train_flags.AMP_DTYPES[args.amp]
        setup.set_seed(args.seed)
        self.sampler = TimedSampler(setup.make_sampler(args, data, split, seed=args.seed + 1))
        self.model = setup.build_model(args, data.schema.to_dict(), setup.feature_tensors(data),
                                      data.itemnum, data.usernum).to(device)
        self.optimizer = optim.build_optimizer(self.model, args.lr, args.adam_betas)
        if args.compile:
            setup.compile_model(self.model)
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
            prepare = functools.partial(train_step.host_inputs, self.model,
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
        tensors = train_step.to_device(batch, self.device)  # the workers gathered the multimodal rows
        _sync(self.device)
        t2 = time.perf_counter()
        loss = train_step.compute_loss(self.model, tensors, self.args, self.amp_dtype)
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

    def summary(self, peak_gflops: float, profiled: StepProfile) -> dict:
        """Medians over the recorded steps; a rate is median(work per step) / median(step time),
        so it agrees with the step time shown next to it (an epoch's last, partial batch does
        not move either median)."""
        r = {k: np.array([s[k] for s in self.records], dtype=np.float64) for k in self.records[0]}
        med = lambda x: float(np.median(x))  # noqa: E731
        matmul_s = profiled.matmul_s
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
            "model_to_matmul": profiled.model_to_matmul,
            "floor_ms_per_step": 1e3 * profiled.floor_s,
            "floor_to_matmul": profiled.floor_to_matmul,
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
    """Matrix-product FLOPs of scoring against shared or per-row candidates (forward +
    backward, 3 x 2 x scores x D); 0 for the baseline's per-position negatives, which
    step_flops counts as its logits."""
    if "target_index" not in batch:
        return 0
    if objective.build_loss(case.args).per_row:  # every slot against its row's K
        scores = batch["pos"].numel() * case.args.num_negatives
    else:  # the targets against "cand": the global and the in-batch candidates
        m = case.data.itemnum if case.args.loss == "full_softmax" else len(batch["cand"])
        scores = len(batch["target_index"]) * m
    return 3 * 2 * scores * case.model.hidden


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


def case_grid(args) -> list[tuple[str, argparse.Namespace, int | None]]:
    """(label, args, synthetic item count) of every configuration; the first is as given."""
    attention = [args.attention_impl]
    if args.compare_attention:
        attention += [i for i in ATTENTION_IMPLS if i != args.attention_impl]
    sparse = [args.sparse_embeddings]
    if args.compare_sparse:
        sparse.append(not args.sparse_embeddings)
    amp = [args.amp] + ([a for a in train_flags.AMP_DTYPES if a != args.amp] if args.compare_amp else [])
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

