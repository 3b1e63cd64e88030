"""Training objectives, picked by name from LOSSES (which also feeds argparse choices=).

Every loss is called the same way, `loss(inputs: LossInputs) -> scalar`, and knows nothing of
files, flags or the model: it gets query and item vectors, the similarity that scores them,
masks and log proposal counts (docs/objectives.md has the definitions and sources).

- bce: the baseline, BCE on one per-position negative (num_negatives 1), or with K negatives of
  each row (sequence), shared by its positions: mean over positions of
  -log s(l_0) - sum_k log(1 - s(l_k)).
- gbce: gSASRec's BCE with K uniform negatives per row whose positive term is raised to beta.
- sampled_softmax: -log softmax over {positive} + candidates (global negatives and/or the batch's
  other positives), each candidate logit minus its log expected count (logQ), hits masked.
- full_softmax: cross-entropy over every item, as sampled_softmax with all items as candidates.

The softmax losses score against candidates in chunks of at most CHUNK_SCORES (positions x
candidates); when there are more than SINGLE_PASS_SCORES, each chunk is recomputed in backward
(a fused autograd Function), so memory is bounded by one chunk however many candidates there
are. BCE-K and gBCE hold (B, L, K) scores: K is a few hundred.

Why BCE-K and gBCE draw negatives per row and not once per batch: measured on ML-1M
(docs/results.md, "gBCE and BCE with many negatives"), gBCE with 256 negatives shared by the
batch reached valid NDCG@10 0.0063 after 8 epochs, 0.0201 with 256 per row; per row is as cheap
as the shared draw (one batched product). Both, like BCE with K summed negative terms in
general, stay near the popularity level early on; the softmax losses do not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Logit of a masked candidate (accidental hit): exp(MASKED - lse) underflows to exactly 0 in
# fp32 and softplus(MASKED) is exactly 0, so it gets no mass; finite (not -inf) because a chunk
# whose candidates are all masked would otherwise give a NaN gradient (exp(-inf - -inf)).
MASKED = -1e9
# Scores held at once by one candidate chunk: 2**25 fp32 scores are 128 MB per tensor.
CHUNK_SCORES = 1 << 25
# Below this many scores in all, the candidates are scored in one piece without recomputation.
SINGLE_PASS_SCORES = 1 << 26


@dataclass
class Candidates:
    """Items positions are scored against: shared by the batch, ids (M,) and vecs (M, D); or
    per row (BCE-K, gBCE), ids (B, K) and vecs (B, K, D), logq unused."""
    ids: Tensor   # (M,) or (B, K) int64 item ids
    vecs: Tensor  # (M, D) or (B, K, D) item vectors
    logq: Tensor  # (M,) float32 log expected count in the batch's draw; 0: no correction
    # ids are first_id, first_id + 1, ... (the whole catalogue): a position's one hit is found
    # by index, O(P), instead of comparing every id, O(P x M)
    first_id: int | None = None


@dataclass
class LossInputs:
    """What a loss sees. Positions are (B, L) for per-position and per-row negatives, the
    (P,) positions that have a target for shared candidates."""
    similarity: Callable  # forward (..., D) x (..., D) -> (...); score_all (P, D) x (M, D) -> (P, M)
    query: Tensor         # (..., D) sequence representation at each position
    pos: Tensor           # (..., D) vector of each position's positive item
    weight: Tensor        # (...) float: 1 where the position has a target, else 0
    tau: float = 1.0      # every logit is divided by tau
    neg: Tensor | None = None         # (..., D) one negative per position (the baseline)
    neg_weight: Tensor | None = None  # (...) float: 1 where that negative exists
    pos_ids: Tensor | None = None     # (P,) or (B, L) int64 positive ids (hit masking)
    pos_logq: Tensor | None = None    # (P,) float32 subtracted from the positive's logit
    cand: Candidates | None = None    # shared or per-row candidates
    seen: Tensor | None = None        # (R, N+1) bool: items of each row's own sequence
    row: Tensor | None = None         # (P,) int64 row of each position into seen (shared cand)
    num_items: int = 0                # catalogue size N (gBCE's alpha)


def at_least_fp32(x: Tensor) -> Tensor:
    """bf16/fp16 logits (autocast) -> fp32 for the log-sum-exp and the sums; fp32 and fp64
    stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def positive_logits(inp: LossInputs) -> Tensor:
    """-> (...) logits (at least fp32) of the positives (logQ-corrected when pos_logq is given)."""
    logits = at_least_fp32(inp.similarity(inp.query, inp.pos)) / inp.tau
    return logits if inp.pos_logq is None else logits - inp.pos_logq


def row_candidate_logits(inp: LossInputs) -> Tensor:
    """Per-row candidates (BCE-K, gBCE): query (B, L, D) against cand.vecs (B, K, D) of its own
    row -> (B, L, K) logits (at least fp32), MASKED where the candidate is the position's
    positive or (with seen) an item of the row's own sequence. One batched matrix product over
    the similarity's inner-product form (query_vectors . item_vectors)."""
    c, sim = inp.cand, inp.similarity
    scores = torch.bmm(sim.query_vectors(inp.query), sim.item_vectors(c.vecs).transpose(1, 2))
    hit = inp.pos_ids[..., None] == c.ids[:, None, :]
    if inp.seen is not None:
        hit = hit | inp.seen.gather(1, c.ids)[:, None, :]
    return (at_least_fp32(scores) / inp.tau).masked_fill(hit, MASKED)


def masked_mean(values: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean without boolean indexing (which would sync the GPU)."""
    return (values * weight).sum() / weight.sum().clamp(min=1)


class Loss:
    """Base of the registry's losses. per_position: uses the baseline's per-position negative;
    per_row: K negatives of each row, shared by its positions (BCE-K, gBCE); otherwise
    candidates shared by the whole batch; all_items: those are the whole catalogue."""
    per_position = False
    per_row = False
    all_items = False

    def __call__(self, inp: LossInputs) -> Tensor:
        raise NotImplementedError


class BCE(Loss):
    """BCE: one per-position negative (the baseline, num_negatives 1) or K negatives per row."""

    def __init__(self, num_negatives: int = 1):
        self.num_negatives = num_negatives
        self.per_position = num_negatives == 1
        self.per_row = not self.per_position

    def beta(self, num_items: int) -> float:
        return 1.0

    def __call__(self, inp: LossInputs) -> Tensor:
        pos_logits = positive_logits(inp)
        if inp.neg is not None:  # the baseline: pos mean + neg mean, each over its own mask
            neg_logits = at_least_fp32(inp.similarity(inp.query, inp.neg)) / inp.tau
            pos_loss = F.binary_cross_entropy_with_logits(
                pos_logits, torch.ones_like(inp.weight), reduction="none")
            neg_loss = F.binary_cross_entropy_with_logits(
                neg_logits, torch.zeros_like(inp.neg_weight), reduction="none")
            return masked_mean(pos_loss, inp.weight) + masked_mean(neg_loss, inp.neg_weight)
        # -log(1 - sigmoid(l)) = softplus(l); a masked hit (MASKED) contributes exactly 0.
        neg_sum = F.softplus(row_candidate_logits(inp)).sum(-1)
        beta = self.beta(inp.num_items)
        return masked_mean(beta * F.softplus(-pos_logits) + neg_sum, inp.weight)


class GBCE(BCE):
    """gBCE (Petrov & Macdonald, RecSys 2023): the positive term times beta, with
    alpha = K / (N - 1) and beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha); t = 0 is BCE."""

    def __init__(self, num_negatives: int = 256, t: float = 0.75):
        super().__init__(num_negatives)
        self.per_position, self.per_row, self.t = False, True, t

    def beta(self, num_items: int) -> float:
        return gbce_beta(self.num_negatives, num_items, self.t)


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    alpha = num_negatives / max(num_items - 1, 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


class SampledSoftmax(Loss):
    """-log softmax over {positive} + candidates, logQ-corrected and hit-masked, per position;
    the candidates' log-sum-exp is one fused, chunked autograd Function (CandidateLogSumExp)
    over the similarity's exact inner-product form (query_vectors . item_vectors)."""

    def __call__(self, inp: LossInputs) -> Tensor:
        pos_logits = positive_logits(inp)
        c = inp.cand
        qv, iv = inp.similarity.query_vectors(inp.query), inp.similarity.item_vectors(c.vecs)
        lse = CandidateLogSumExp.apply(qv, iv, c.logq, c.ids, inp.pos_ids, inp.seen, inp.row,
                                       1.0 / inp.tau, c.first_id)
        return masked_mean(torch.logaddexp(pos_logits, lse) - pos_logits, inp.weight)


def _score_dtype(qv: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's (bf16) when it is on, else at least fp32."""
    if torch.is_autocast_enabled(qv.device.type):
        return torch.get_autocast_dtype(qv.device.type)
    return torch.promote_types(qv.dtype, torch.float32)


def _masked_scores(qv, iv, neg_logq, ids, pos_ids, seen, row, scale, dtype,
                   first: int | None) -> Tensor:
    """qv (P, D'), a chunk iv (C, D'), neg_logq (C,), ids (C,) -> (P, C) at least fp32:
    scale * qv . iv - logq, MASKED on hits. One fused addmm when the matmul dtype is the
    accumulation dtype; the mask is applied in place."""
    acc = torch.promote_types(qv.dtype, torch.float32)
    if dtype == acc:
        s = torch.addmm(neg_logq.to(acc), qv.to(acc), iv.to(acc).T, alpha=scale)
    else:  # bf16 product, fp32 from there on
        s = torch.mm(qv.to(dtype), iv.to(dtype).T).to(acc).mul_(scale).add_(neg_logq)
    if first is None:
        s.masked_fill_(pos_ids[:, None] == ids[None, :], MASKED)
    else:  # consecutive ids: the hit is column pos - first, if inside this chunk
        col = pos_ids - first
        inside = ((col >= 0) & (col < s.shape[1]))[:, None]
        col = col.clamp(0, max(s.shape[1] - 1, 0))[:, None]
        s.scatter_(1, col, torch.where(inside, MASKED, s.gather(1, col)))
    if seen is not None:
        s.masked_fill_(seen[:, ids][row], MASKED)  # (R, C) gathered to (P, C)
    return s


class CandidateLogSumExp(torch.autograd.Function):
    """lse (P,) = log sum_c exp(scale * qv_p . iv_c - logq_c) over the candidates c that are
    not hits of position p (the positive's id; with seen, the row's items).

    Forward streams over candidate chunks of CHUNK_SCORES scores (a running logaddexp), in
    place, no autograd graph. Backward: d lse_p / d s_pc = softmax_pc, so grad_qv = (g scale
    softmax) @ iv and grad_iv = its transpose @ qv; the chunk's softmax is kept from forward
    when all scores fit SINGLE_PASS_SCORES, else recomputed chunk by chunk (memory: one chunk).
    Equal to autograd through the plain formula (tests/test_losses.py)."""

    @staticmethod
    def forward(ctx, qv, iv, logq, ids, pos_ids, seen, row, scale, first=None):
        p, m = qv.shape[0], iv.shape[0]
        dtype = _score_dtype(qv)
        neg_logq = -logq.to(torch.promote_types(qv.dtype, torch.float32))
        single = p * m <= SINGLE_PASS_SCORES
        chunk = max(1, m if single else CHUNK_SCORES // max(p, 1))
        with torch.autocast(qv.device.type, enabled=False):
            lse = torch.full((p,), MASKED, dtype=neg_logq.dtype, device=qv.device)
            kept = None
            for s0 in range(0, m, chunk):
                e = _masked_scores(qv, iv[s0:s0 + chunk], neg_logq[s0:s0 + chunk],
                                   ids[s0:s0 + chunk], pos_ids, seen, row, scale, dtype,
                                   None if first is None else first + s0)
                top = e.amax(1, keepdim=True) if e.shape[1] else lse[:, None].clone()
                part = e.sub_(top).exp_().sum(1).log_().add_(top[:, 0])
                lse = torch.logaddexp(lse, part)
                kept = (e, top[:, 0]) if single else None
        ctx.scale, ctx.chunk, ctx.dtype, ctx.first = scale, chunk, dtype, first
        saved = [qv, iv, neg_logq, ids, pos_ids, seen, row, lse]
        saved += list(kept) if kept is not None else [None, None]
        ctx.save_for_backward(*saved)
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        qv, iv, neg_logq, ids, pos_ids, seen, row, lse, e, top = ctx.saved_tensors
        coef = (grad_lse * ctx.scale).to(lse.dtype)
        acc = lse.dtype
        grad_qv = torch.zeros(qv.shape, dtype=acc, device=qv.device)
        grad_iv = torch.empty(iv.shape, dtype=acc, device=iv.device)
        with torch.autocast(qv.device.type, enabled=False):
            qa, ia = qv.to(acc), iv.to(acc)
            for s0 in range(0, iv.shape[0], ctx.chunk):
                s1 = s0 + ctx.chunk
                if e is not None:  # one chunk, its exp(s - top) kept from forward; in place:
                    # this graph is differentiated once (no retain_graph in training)
                    w = e.mul_((torch.exp(top - lse) * coef)[:, None])
                else:
                    w = _masked_scores(qv, iv[s0:s1], neg_logq[s0:s1], ids[s0:s1], pos_ids,
                                       seen, row, ctx.scale, ctx.dtype,
                                       None if ctx.first is None else ctx.first + s0)
                    w = w.sub_(lse[:, None]).exp_().mul_(coef[:, None])
                grad_qv.addmm_(w, ia[s0:s1])
                torch.mm(w.T, qa, out=grad_iv[s0:s1])
        return (grad_qv.to(qv.dtype), grad_iv.to(iv.dtype), None, None, None, None, None, None,
                None)


class FullSoftmax(SampledSoftmax):
    """Cross-entropy over the whole catalogue: the candidates are every item (the positive's
    own entry is masked, its logit is the positive's), no logQ."""
    all_items = True


# name -> factory(num_negatives, gbce_t); feeds --loss choices=.
LOSSES: dict[str, Callable[..., Loss]] = {
    "bce": lambda num_negatives=1, gbce_t=0.0: BCE(num_negatives),
    "sampled_softmax": lambda num_negatives=1024, gbce_t=0.0: SampledSoftmax(),
    "full_softmax": lambda num_negatives=0, gbce_t=0.0: FullSoftmax(),
    "gbce": lambda num_negatives=256, gbce_t=0.75: GBCE(num_negatives, gbce_t),
}
SOFTMAX_LOSSES = ("sampled_softmax", "full_softmax")  # the losses logQ applies to
DEFAULT_NEGATIVES = {"bce": 1, "sampled_softmax": 1024, "full_softmax": 0, "gbce": 256}
assert set(DEFAULT_NEGATIVES) == set(LOSSES)
