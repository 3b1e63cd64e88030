"""Ranking metrics for leave-one-out evaluation (docs/evaluation.md).

Pure tensor math, no model code. The pipeline for one evaluation batch is

    scores = model.score_all(...)                       # (B, N+1), column j = item j
    exclude = seen_mask(hist_items, hist_offsets, N + 1)  # (B, N+1) bool
    ranks, num_cand = target_ranks(scores, targets, exclude)
    acc.add(ranks, num_cand)                            # no GPU sync
    ...
    acc.result("full")                                  # one sync, at the end

Tie rule (both protocols): rank = 1 + #(candidates strictly higher) + #(OTHER candidates exactly
equal), so ties never favour the target. NaN scores never favour the target either: a NaN target
score ranks last (rank = num_candidates), and a NaN score on another candidate counts as if it tied
the target. Both follow from one comparison: a candidate counts against the target unless its
score is strictly lower, and `x < nan` is False.
"""
from __future__ import annotations

import torch
from torch import Tensor

KS: tuple[int, ...] = (1, 5, 10, 20, 50)
HEADLINE_K = 10  # the competition score uses HR@10 and NDCG@10 whatever `ks` holds
SCORE_WEIGHTS = (0.31, 0.69)  # score = 0.31 * HR@10 + 0.69 * NDCG@10


# ----------------------------------------------------------------------------- ranks


def target_ranks(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Full-ranking rank of each user's target among all items.

    scores (B, N+1) float: column j scores item j; column 0 (padding) is never a candidate.
    targets (B,) int64 item ids in 1..N.
    exclude (B, N+1) bool or None: items removed from the candidates (seen items); the target is
        never excluded, even where marked.
    -> ranks (B,) int64 in 1..num_candidates, num_candidates (B,) int64 (target included),
       both on scores.device. See the module docstring for ties and NaN.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, N+1) with N >= 1, got {tuple(scores.shape)}")
    batch, width = scores.shape
    targets = _check_targets(targets, batch, width, scores.device)
    rows = torch.arange(batch, device=scores.device)

    if exclude is None:
        candidate = torch.ones(batch, width, dtype=torch.bool, device=scores.device)
    else:
        if exclude.dtype != torch.bool or exclude.shape != scores.shape:
            raise ValueError(
                f"exclude must be bool {tuple(scores.shape)}, got {exclude.dtype} {tuple(exclude.shape)}"
            )
        candidate = ~exclude.to(scores.device)
    candidate[:, 0] = False
    candidate[rows, targets] = True

    target_score = scores.gather(1, targets[:, None])  # (B, 1)
    # Counts the target itself once (t < t is False), every strictly higher candidate, every
    # tied one and every NaN one; with a NaN target nothing is "< nan", so rank = num_candidates.
    not_lower = ~(scores < target_score)
    ranks = (not_lower & candidate).sum(dim=1)
    num_candidates = candidate.sum(dim=1)
    return ranks, num_candidates


def sampled_ranks(target_scores: Tensor, candidate_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Rank of the target against n sampled negatives (the "sampled-100" protocol).

    target_scores (B,) float, candidate_scores (B, n) float (negatives only, target not among them).
    -> ranks (B,) int64 in 1..n+1, num_candidates (B,) int64 = n + 1. Same tie/NaN rule as
    target_ranks.
    """
    if candidate_scores.dim() != 2 or target_scores.shape != candidate_scores.shape[:1]:
        raise ValueError(
            f"need target_scores (B,) and candidate_scores (B, n), got "
            f"{tuple(target_scores.shape)} and {tuple(candidate_scores.shape)}"
        )
    batch, n = candidate_scores.shape
    not_lower = ~(candidate_scores < target_scores[:, None])
    ranks = 1 + not_lower.sum(dim=1)
    num_candidates = torch.full((batch,), n + 1, dtype=torch.int64, device=candidate_scores.device)
    return ranks, num_candidates


def seen_mask(hist_items: Tensor, hist_offsets: Tensor, num_items_plus_one: int) -> Tensor:
    """Exclusion mask from ragged histories.

    hist_items (T,) int64: all users' items concatenated; user b owns
        hist_items[hist_offsets[b]:hist_offsets[b+1]]. Ids in 0..N (0 is harmless: padding is
        never a candidate anyway).
    hist_offsets (B+1,) int64, non-decreasing, offsets[0] = 0, offsets[-1] = T.
    -> (B, N+1) bool on hist_items.device, True where the user has the item.
    """
    batch, lengths = _check_ragged(hist_items, hist_offsets)
    device = hist_items.device
    # output_size is known on the host, so repeat_interleave does not sync the GPU to size it.
    rows = torch.repeat_interleave(
        torch.arange(batch, device=device), lengths.to(device), output_size=hist_items.numel()
    )
    mask = torch.zeros(batch, num_items_plus_one, dtype=torch.bool, device=device)
    mask[rows, hist_items.long()] = True
    return mask


# ----------------------------------------------------------------------------- sampled protocol


def sample_candidates(
    generator: torch.Generator,
    hist_items: Tensor,
    hist_offsets: Tensor,
    targets: Tensor,
    num_items: int,
    n: int = 100,
    max_rounds: int = 64,
) -> Tensor:
    """n distinct random negatives per user for the sampled protocol.

    Each row is a uniformly random n-subset of the items 1..num_items the user never interacted
    with and that are not the target (distinct, unlike the SASRec reference code, which may draw
    the same negative twice). Rejection sampling over the whole batch at once: draw, reject
    forbidden ids and repeats within a row, redraw the rejected slots. Rows still unfinished after
    `max_rounds` (users whose allowed set is barely larger than n) are redrawn exactly by sorting
    random keys over their allowed items; either way each row's set is uniform.

    generator: owns the random stream; the same seed gives the same candidates. Draws happen on
        generator.device.
    hist_items (T,), hist_offsets (B+1,): ragged histories as in seen_mask.
    targets (B,) int64 in 1..num_items.
    -> (B, n) int64 on hist_items.device. Raises ValueError naming the first user with fewer than
       n allowed items.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    device = hist_items.device
    forbidden = seen_mask(hist_items, hist_offsets, num_items + 1)  # (B, N+1)
    batch = forbidden.shape[0]
    targets = _check_targets(targets, batch, num_items + 1, device)
    forbidden[torch.arange(batch, device=device), targets] = True
    forbidden[:, 0] = True

    allowed_count = (~forbidden).sum(dim=1)
    short = (allowed_count < n).nonzero()
    if short.numel():
        user = int(short[0, 0])
        raise ValueError(
            f"user {user} has only {int(allowed_count[user])} items outside its history and "
            f"target, cannot sample {n} distinct negatives"
        )

    rand_device = generator.device
    values = torch.randint(1, num_items + 1, (batch, n), generator=generator, device=rand_device).to(device)
    for _ in range(max_rounds):
        rejected = forbidden.gather(1, values) | _later_repeats(values)
        if not bool(rejected.any()):  # syncs once per round; rounds are few
            return values
        fresh = torch.randint(1, num_items + 1, (batch, n), generator=generator, device=rand_device)
        values = torch.where(rejected, fresh.to(device), values)

    rejected = forbidden.gather(1, values) | _later_repeats(values)
    unfinished = rejected.any(dim=1).nonzero().squeeze(1)
    if unfinished.numel():
        keys = torch.rand(
            (unfinished.numel(), num_items + 1), generator=generator, device=rand_device
        ).to(device)
        keys[forbidden[unfinished]] = 2.0  # above every rand() key: never among the n smallest
        values[unfinished] = keys.topk(n, dim=1, largest=False).indices
    return values


def _later_repeats(values: Tensor) -> Tensor:
    """values (B, n) -> (B, n) bool, True on every occurrence of a value after its first in the row."""
    sorted_values, order = values.sort(dim=1, stable=True)
    repeat_sorted = sorted_values[:, 1:] == sorted_values[:, :-1]
    repeats = torch.zeros_like(values, dtype=torch.bool)
    repeats.scatter_(1, order[:, 1:], repeat_sorted)
    return repeats


# ----------------------------------------------------------------------------- metrics


def metric_names(ks: tuple[int, ...] = KS) -> list[str]:
    """Ordered metric names: HR@k for k in ks, NDCG@k for k in ks, MRR, AUC, score."""
    return [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR", "AUC", "score"]


def per_user_metrics(ranks: Tensor, num_candidates: Tensor, ks: tuple[int, ...] = KS) -> dict[str, Tensor]:
    """Per-user metrics from 1-based ranks.

    ranks (B,) int, num_candidates (B,) int with 1 <= rank <= num_candidates
    -> {name: (B,) float64} in metric_names(ks) order.
    AUC = (N - r) / (N - 1), the share of the other candidates ranked below the target; with a
    single candidate (N = 1) there is nothing to rank against and AUC is defined as 1.0.
    """
    _check_ks(ks)
    r = ranks.to(torch.float64)
    n = num_candidates.to(torch.float64)
    gain = 1.0 / torch.log2(r + 1.0)

    def hit(k: int) -> Tensor:
        return (r <= k).to(torch.float64)

    out: dict[str, Tensor] = {}
    for k in ks:
        out[f"HR@{k}"] = hit(k)
    for k in ks:
        out[f"NDCG@{k}"] = gain * hit(k)
    out["MRR"] = 1.0 / r
    single = n <= 1
    safe_denominator = torch.where(single, torch.ones_like(n), n - 1.0)  # avoids a 0/0 NaN where N = 1
    out["AUC"] = torch.where(single, torch.ones_like(r), (n - r) / safe_denominator)
    w_hr, w_ndcg = SCORE_WEIGHTS
    out["score"] = w_hr * hit(HEADLINE_K) + w_ndcg * gain * hit(HEADLINE_K)
    return out


class MetricAccumulator:
    """Running sums of per-user metrics over evaluation batches.

    The sums stay a float64 tensor on the ranks' device; `add` never calls .item(), so evaluating
    on a GPU does not stall per batch. `result` converts once at the end.
    """

    def __init__(self, ks: tuple[int, ...] = KS) -> None:
        _check_ks(ks)
        self.ks = tuple(ks)
        self.names = metric_names(self.ks)
        self._sums: Tensor | None = None  # (M,) float64, created on the first batch's device
        self._weighted: Tensor | None = None  # (3,) sums of w HR@10, w NDCG@10, w
        self.num_users = 0  # a host int: batch sizes are known without a sync

    def add(self, ranks: Tensor, num_candidates: Tensor, weights: Tensor | None = None) -> None:
        """ranks (B,), num_candidates (B,) from target_ranks or sampled_ranks; weights (B,)
        per-target weights (competition protocol) add the weighted HR@10 / NDCG@10 / score."""
        per_user = per_user_metrics(ranks, num_candidates, self.ks)
        batch_sums = torch.stack([per_user[name] for name in self.names], dim=1).sum(dim=0)
        self._sums = batch_sums if self._sums is None else self._sums + batch_sums
        self.num_users += ranks.shape[0]
        if weights is not None:
            hr, ndcg = weighted_parts(ranks)
            w = weights.to(device=ranks.device, dtype=torch.float64)
            part = torch.stack([(w * hr).sum(), (w * ndcg).sum(), w.sum()])
            self._weighted = part if self._weighted is None else self._weighted + part

    def result(self, protocol: str) -> dict:
        """-> {metric name: mean over users (float), "num_users": int, "protocol": str}."""
        if self._sums is None or self.num_users == 0:
            raise ValueError("no users were evaluated")
        means = (self._sums / self.num_users).tolist()
        out: dict = dict(zip(self.names, means))
        if self._weighted is not None:
            out.update(weighted_result(*self._weighted.tolist()))
        out["num_users"] = self.num_users
        out["protocol"] = protocol
        return out


def weighted_parts(ranks: Tensor) -> tuple[Tensor, Tensor]:
    """ranks (B,) -> per-user HR@10 and NDCG@10 (B,) float64, the weighted metrics' terms."""
    r = ranks.to(torch.float64)
    hit = (r <= HEADLINE_K).to(torch.float64)
    return hit, hit / torch.log2(r + 1.0)


def weighted_result(w_hr: float, w_ndcg: float, w_sum: float) -> dict:
    """The second round's action-weighted metrics. Its normalisation is not published; this is
    the weighted mean sum_u w_u m_u / sum_u w_u (click 1, conversion 2.5), so a perfect model
    scores 1 and with clicks only the weighted metrics equal the plain ones."""
    hr, ndcg = (w_hr / w_sum, w_ndcg / w_sum) if w_sum > 0 else (0.0, 0.0)
    w_a, w_b = SCORE_WEIGHTS
    return {"HR@10_weighted": hr, "NDCG@10_weighted": ndcg, "score_weighted": w_a * hr + w_b * ndcg,
            "weighted_normalisation": "sum(w * metric) / sum(w); w = 1 click, 2.5 conversion"}


# ----------------------------------------------------------------------------- checks


def _check_targets(targets: Tensor, batch: int, width: int, device: torch.device) -> Tensor:
    """Targets must be item ids 1..width-1: a target of 0 would silently rank the padding column.

    One scalar sync per batch; evaluation is bound by the (B, N+1) scoring, not by this.
    """
    if targets.shape != (batch,):
        raise ValueError(f"targets must be ({batch},), got {tuple(targets.shape)}")
    targets = targets.to(device=device, dtype=torch.long)
    bad = ((targets < 1) | (targets >= width)).nonzero()
    if bad.numel():
        user = int(bad[0, 0])
        raise ValueError(f"target of user {user} is {int(targets[user])}, outside item ids 1..{width - 1}")
    return targets


def _check_ragged(hist_items: Tensor, hist_offsets: Tensor) -> tuple[int, Tensor]:
    """-> (B, lengths (B,)); rejects offsets that do not describe hist_items exactly."""
    if hist_items.dim() != 1 or hist_offsets.dim() != 1 or hist_offsets.numel() < 1:
        raise ValueError("hist_items must be (T,) and hist_offsets (B+1,)")
    lengths = hist_offsets[1:] - hist_offsets[:-1]
    if int(hist_offsets[0]) != 0 or int(hist_offsets[-1]) != hist_items.numel() or bool((lengths < 0).any()):
        raise ValueError(
            f"hist_offsets must rise from 0 to len(hist_items) = {hist_items.numel()}, "
            f"got {hist_offsets.tolist()[:3]}...{int(hist_offsets[-1])}"
        )
    return hist_offsets.numel() - 1, lengths


def _check_ks(ks: tuple[int, ...]) -> None:
    if not ks or any(int(k) != k or k < 1 for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be distinct positive integers, got {ks}")
