"""Ranking evaluation of a model on next-item queries (../shared/docs/evaluation.md).

Every score comes from `model.similarity`, the function the loss trained, over
`model.embed_items` of all items: full ranking by default, the sampled-100 protocol only when asked
(and then labelled "sampled-100" in every output). Users are processed in chunks sized so a chunk's
score matrix stays within a fixed memory budget, whatever the catalogue size.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

from inputs.batching import Queries, item_histories, query_arrays
from dataset import SequenceData
from evaluation.metrics import (HEADLINE_K, MetricAccumulator, sample_candidates, sampled_ranks, seen_mask,
                     target_ranks)

SCORE_BUDGET = 2 ** 25  # scores held at once (128 MB in fp32): bounds memory per chunk


def protocol_name(sampled: int) -> str:
    return f"sampled-{sampled}" if sampled else "full"


@torch.no_grad()
def item_matrix(model, itemnum: int, device, chunk: int = 65536) -> Tensor:
    """(itemnum + 1, D) vectors of all items (row 0 = padding), computed in chunks."""
    ids = torch.arange(itemnum + 1, device=device)
    return torch.cat([model.embed_items(ids[i:i + chunk]).float()
                      for i in range(0, len(ids), chunk)])


@torch.no_grad()
def evaluate(model, seqs: SequenceData, queries: Queries, itemnum: int, maxlen: int, device,
             *, batch_size: int = 128, filter_seen: bool = True, sampled: int = 0,
             seed: int = 0, amp_dtype: torch.dtype | None = None, protocol: str | None = None,
             candidates: np.ndarray | None = None) -> dict:
    """Mean metrics over the queries: HR@K, NDCG@K, MRR, AUC, score, num_users, protocol
    (`protocol` names it; default "full" or "sampled-N"). Queries with weights add the
    weighted HR@10 / NDCG@10 / score. candidates (C,) item ids: rank against this pool only
    (full ranking); a target outside it is a miss."""
    was_training = model.training
    model.eval()
    try:
        items = item_matrix(model, itemnum, device)
        acc = MetricAccumulator()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        chunk = max(1, min(batch_size, SCORE_BUDGET // (itemnum + 1)))
        pool = _pool_mask(candidates, itemnum, device)
        for b in range(0, len(queries.targets), chunk):
            rows = np.arange(b, min(b + chunk, len(queries.targets)))
            ranks, n = _chunk_ranks(model, seqs, queries, rows, items, maxlen, device,
                                    filter_seen, sampled, gen, amp_dtype, pool)
            weights = None if queries.weights is None else torch.from_numpy(queries.weights[rows])
            acc.add(ranks, n, weights)
        return acc.result(protocol or protocol_name(sampled))
    finally:
        model.train(was_training)


def _pool_mask(candidates: np.ndarray | None, itemnum: int, device) -> torch.Tensor | None:
    """(itemnum + 1,) bool, True for the candidate pool's items; None: every item."""
    if candidates is None:
        return None
    ids = np.asarray(candidates, dtype=np.int64)
    if len(ids) and (ids.min() < 1 or ids.max() > itemnum):
        raise ValueError(f"candidate pool: item ids must be in 1..{itemnum}")
    pool = torch.zeros(itemnum + 1, dtype=torch.bool)
    pool[torch.from_numpy(ids)] = True
    return pool.to(device)


def _chunk_ranks(model, seqs, queries, rows, items, maxlen, device, filter_seen, sampled, gen,
                 amp_dtype, pool=None):
    inputs = queries.inputs.take(rows)
    arrays = query_arrays(seqs, inputs, maxlen)
    targets = torch.from_numpy(queries.targets[rows]).to(device)
    with _autocast(device, amp_dtype):
        q = model.predict(*(torch.from_numpy(arrays[k]).to(device) for k in ("seq", "token_type")))
    q = q.float()
    hist, offsets = (torch.from_numpy(a).to(device) for a in item_histories(seqs, inputs))
    similarity = model.similarity.float() if amp_dtype else model.similarity
    if sampled:
        cands = sample_candidates(gen, hist, offsets, targets, len(items) - 1, sampled)
        return sampled_ranks(similarity(q, items[targets]),
                             similarity(q[:, None, :], items[cands]))
    scores = similarity.score_all(q, items)
    exclude = seen_mask(hist, offsets, len(items)) if filter_seen else None
    if pool is None:
        return target_ranks(scores, targets, exclude)
    outside = ~pool.expand(len(rows), -1)
    ranks, n = target_ranks(scores, targets, outside if exclude is None else exclude | outside)
    # A target outside the pool cannot be retrieved: a miss however small the pool, so it is
    # ranked HEADLINE_K places below every candidate (HR@10 = NDCG@10 = AUC = 0).
    missed = ~pool[targets]
    past = n + HEADLINE_K
    return torch.where(missed, past, ranks), torch.where(missed, past, n)


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def format_table(results: dict[str, dict]) -> str:
    """{split: metrics} -> a fixed-width text table, one row per split."""
    cols = ["HR@1", "HR@5", "HR@10", "HR@20", "HR@50", "NDCG@10", "MRR", "AUC", "score"]
    lines = [f"{'split':<8}{'protocol':<12}{'users':>7} " + " ".join(f"{c:>8}" for c in cols)]
    for split, m in results.items():
        lines.append(f"{split:<8}{m['protocol']:<12}{m['num_users']:>7} "
                     + " ".join(f"{m[c]:>8.4f}" for c in cols))
    return "\n".join(lines)
