"""Host-side negatives of every loss but the baseline's BCE-1: shared by the batch (softmax
losses) or K per row (BCE-K, gBCE).

`BatchNegatives` wraps the SmartNegativeSampler and is handed to TrainBatches in its place, so
it is called from batch assembly as the per-position sampler is (numpy, the sampler's seeded
generator: deterministic per (seed, epoch) and checkpointed with it). Sampling stays on the host
because it is a few thousand draws per batch (well under a millisecond), the proposal's log
probabilities come with them, and a background batch worker hides it from the GPU entirely; on
the device it would need no sync either, but the popularity CDF and curriculum live here.

Per batch it adds (see `shared_negatives`):
  target_index (n,) int64  flat (B * L) index of each position whose next token is an item
  cand         (M,) int64  global negatives (uniform, or popularity mixed by --popular_ratio),
                           then, with in_batch, the distinct items among the batch's targets;
                           per row: (B * K,), row b's K negatives at [b * K, (b + 1) * K)
  cand_logq    (M,) float32 what is subtracted from each candidate's logit: its log expected
                           count in its source's draw (0 without logQ), and for an in-batch
                           item that occurs c times among the targets also - log c
  pos_logq     (n,) float32 log expected count of each target among the batch's n targets
               (the in-batch source's Q; 0 without in_batch or without logQ)

In-batch candidates are the batch's distinct target items, each standing for its c copies:
c equal logits exp(l - log Q) sum to exp(l - log Q + log c), so the loss and its gradients are
exactly those of scoring every position's positive as a candidate, at the cost of at most
min(targets, catalogue) candidates instead of targets (ML-1M: ~3,000 instead of ~14,000).
"""
from __future__ import annotations

import numpy as np

from dataset import TOKEN_ITEM
from inputs.unique import sorted_unique

NEGATIVE_SOURCES: tuple[str, ...] = ("uniform", "popularity", "in_batch")  # argparse choices=
GLOBAL_SOURCES = ("uniform", "popularity")


class BatchNegatives:
    """Negatives for a batch. sampler: a SmartNegativeSampler (its popularity, popular ratio,
    curriculum and random stream); num_global: K global negatives (0: none), drawn once for the
    batch or, with per_row, K for each row; target_counts (N+1,): training frequency of each item
    as a target (in-batch Q)."""

    def __init__(self, sampler, num_global: int, in_batch: bool, target_counts: np.ndarray,
                 logq: bool, per_row: bool = False):
        if per_row and (in_batch or not num_global):
            raise ValueError("per-row negatives are K global draws per row, without in_batch")
        self.sampler, self.num_global, self.in_batch, self.logq = sampler, num_global, in_batch, logq
        self.per_row = per_row
        counts = np.maximum(np.asarray(target_counts, dtype=np.float64), 1.0)  # unseen: as once
        self._log_freq = np.log(counts / counts.sum())

    def sample(self, hist_items, hist_offsets, target_mask) -> np.ndarray:
        """The per-position negatives slot of the batch: unused by these losses, all 0."""
        return np.zeros(np.shape(target_mask), dtype=np.int64)

    def shared_negatives(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """batch: the training arrays (B, L) -> the arrays listed in the module docstring."""
        target = (batch["next_token_type"] == TOKEN_ITEM) & (batch["pos"] != 0)
        index = np.flatnonzero(target).astype(np.int64)
        if self.per_row:  # K for each row; BCE needs no log Q
            ids, _ = self.sampler.sample_shared(self.num_global * target.shape[0])
            return {"target_index": index, "cand": ids.astype(np.int64),
                    "cand_logq": np.zeros(ids.size, np.float32),
                    "pos_logq": np.zeros(index.size, np.float32)}
        if self.num_global:
            ids, log_count = self.sampler.sample_shared(self.num_global)
        else:
            ids, log_count = np.zeros(0, np.int64), np.zeros(0)
        pos_logq = np.zeros(index.size)
        if self.in_batch and index.size:
            pos_logq = np.log(index.size) + self._log_freq[batch["pos"].reshape(-1)[index]]
        if not self.logq:
            log_count, pos_logq = np.zeros_like(log_count), np.zeros_like(pos_logq)
        if self.in_batch:
            items, copies = sorted_unique(batch["pos"].reshape(-1)[index], return_counts=True)
            in_batch_logq = np.log(copies) * -1.0
            if self.logq:
                in_batch_logq += np.log(index.size) + self._log_freq[items]
            ids = np.concatenate([ids, items])
            log_count = np.concatenate([log_count, in_batch_logq])
        return {"target_index": index, "cand": ids.astype(np.int64),
                "cand_logq": log_count.astype(np.float32), "pos_logq": pos_logq.astype(np.float32)}

    def __getattr__(self, name):
        # set_epoch, state_dict, load_state_dict, epoch_stats, ...: the wrapped sampler's
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)
