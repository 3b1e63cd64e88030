"""What a training step should cost and what the machine can do: the step's matrix-product
FLOPs, the machine's matmul peak (sampled between the steps, under the same load), and the time
the step's matrix products take, and its work that no torch rearrangement removes
(torch.profiler)."""
from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from kernels.attention import score_blocks
from model import BaseModel

PEAK_SIZE = 2048  # square matmul that measures the machine's peak (CPU: ~0.1-0.5 s)


PEAK_SIZE_CUDA = 8192  # on a GPU 2048^2 takes microseconds: launch and sync would dominate


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
      fast CPU path, which skips it (see kernels.attention.attention);
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


# the kernels that do a step's matrix products (linear layers, bmm of the attention)
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                        "aten::_addmm_activation"})
# Work outside the matrix products that torch does in one kernel each and that no rearrangement
# of torch ops removes or makes cheaper: the dropout masks' random bits (already 16 bits a
# mask element, the cheapest draw torch has), LayerNorm forward and backward, the attention's
# softmax, the embedding lookups' backward, and dropout where torch's own fused kernel runs
# (CUDA). Everything else in a step (dropout products, residual sums, copies, concatenations,
# bias adds, softmax backward, the loss, the optimizer) is left out, as if it were free, so
# (matrix products + these) / matrix products is a lower bound on a torch step's model/mm.
FLOOR_OPS = frozenset({"aten::random_", "aten::native_layer_norm",
                       "aten::native_layer_norm_backward", "aten::_softmax",
                       "aten::embedding_dense_backward", "aten::native_dropout"})


class StepProfile(NamedTuple):
    """Medians over a few profiled steps (seconds; ratios to their own matrix-product time)."""
    matmul_s: float  # the step's matrix products
    model_to_matmul: float  # the step's model time (forward, backward, optimizer)
    floor_s: float  # the FLOOR_OPS' work
    floor_to_matmul: float  # (matrix products + FLOOR_OPS) / matrix products


def profile_step(case, steps: int = 3) -> StepProfile:
    """`case`: a benchmarks.cases.Case. Profiles `steps` (unrecorded) steps. Every ratio is taken
    within one step, so it holds on a machine whose load changes between the timed steps and
    these. The profiler adds ~5% to a CPU step's time (measured against unprofiled steps in
    turn), so model_to_matmul reads a little high."""
    cuda = case.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    mm, floor, ratio = [], [], []
    for _ in range(steps):
        with profile(activities=activities) as prof:
            record = case.step()
        micros = {e.key: e.self_device_time_total if cuda else e.self_cpu_time_total
                  for e in prof.key_averages()}
        mm.append(sum(micros.get(k, 0) for k in MATMUL_OPS) / 1e6)
        floor.append(sum(micros.get(k, 0) for k in FLOOR_OPS) / 1e6)
        ratio.append(record["model"] / mm[-1])
    mm_s, floor_s = float(np.median(mm)), float(np.median(floor))
    return StepProfile(mm_s, float(np.median(ratio)), floor_s,
                       float(np.median([(m + f) / m for m, f in zip(mm, floor)])))
