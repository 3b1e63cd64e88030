"""Metric tests against hand-computed values (docs/evaluation.md), plus one slow-reference parity test."""
import math

import pytest
import torch

from evaluation.metrics import (
    KS,
    MetricAccumulator,
    metric_names,
    per_user_metrics,
    sample_candidates,
    sampled_ranks,
    seen_mask,
    target_ranks,
)

NAN = float("nan")


def _close(actual, expected):
    assert actual == pytest.approx(expected, abs=1e-12), (actual, expected)


# ----------------------------------------------------------------------------- target_ranks


def test_tie_counts_against_target():
    # scores [pad, 0.9, 0.5, 0.5, 0.1]; candidates are items 1..4 (N = 4).
    # target 2: item 1 higher (1) + item 3 tied (1) -> rank 1 + 1 + 1 = 3.
    # target 3: symmetric, item 1 higher + item 2 tied -> rank 3 (ties favour neither).
    # target 1: nothing higher, no tie -> rank 1.  target 4: 3 higher -> rank 4.
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.5, 0.1]]).repeat(4, 1)
    ranks, num = target_ranks(scores, torch.tensor([2, 3, 1, 4]))
    assert ranks.tolist() == [3, 3, 1, 4]
    assert num.tolist() == [4, 4, 4, 4]
    assert ranks.dtype == torch.int64 and num.dtype == torch.int64


def test_all_tied_target_is_last():
    # scores [pad, 0.5, 0.5, 0.5]: target 1 ties with items 2 and 3 -> rank 1 + 0 + 2 = 3 = N.
    ranks, num = target_ranks(torch.tensor([[0.0, 0.5, 0.5, 0.5]]), torch.tensor([1]))
    assert ranks.tolist() == [3] and num.tolist() == [3]


def test_padding_column_ignored_even_when_highest():
    # scores [pad=10.0, 0.2, 0.8, 0.5], target 2: the pad column is not a candidate -> rank 1, N = 3.
    # Even an exclude mask that leaves column 0 unmarked does not bring the padding back.
    scores = torch.tensor([[10.0, 0.2, 0.8, 0.5]])
    ranks, num = target_ranks(scores, torch.tensor([2]))
    assert ranks.tolist() == [1] and num.tolist() == [3]
    ranks, num = target_ranks(scores, torch.tensor([2]), torch.zeros(1, 4, dtype=torch.bool))
    assert ranks.tolist() == [1] and num.tolist() == [3]


def test_seen_filter_improves_rank_and_never_drops_target():
    # scores [pad, 0.9, 0.7, 0.3, 0.8], target 3 (score 0.3).
    scores = torch.tensor([[0.0, 0.9, 0.7, 0.3, 0.8]]).repeat(3, 1)
    targets = torch.tensor([3, 3, 3])
    exclude = torch.zeros(3, 5, dtype=torch.bool)
    # row 0: nothing excluded -> items 1, 2, 4 higher -> rank 4, N = 4.
    # row 1: seen {1, 4} excluded -> only item 2 higher -> rank 2, N = 2.
    exclude[1, [1, 4]] = True
    # row 2: seen {1, 3} with the target 3 marked: target stays, candidates {2, 3, 4},
    #        items 2 (0.7) and 4 (0.8) higher -> rank 3, N = 3.
    exclude[2, [1, 3]] = True
    ranks, num = target_ranks(scores, targets, exclude)
    assert ranks.tolist() == [4, 2, 3]
    assert num.tolist() == [4, 2, 3]
    assert exclude[2, 3]  # the caller's mask is not modified


def test_nan_scores_never_favour_target():
    # row 0: scores [pad, 0.1, nan, 0.3], target 2 has NaN -> ranked last: rank = N = 3.
    # row 1: scores [pad, 0.5, nan, 0.3], target 1: the NaN item counts as a tie -> rank 2.
    # row 2: scores [pad, nan, nan, nan], target 3 -> rank 3 = N.
    scores = torch.tensor([[0.0, 0.1, NAN, 0.3], [0.0, 0.5, NAN, 0.3], [0.0, NAN, NAN, NAN]])
    ranks, num = target_ranks(scores, torch.tensor([2, 1, 3]))
    assert ranks.tolist() == [3, 2, 3]
    assert num.tolist() == [3, 3, 3]


def test_target_out_of_range_raises():
    scores = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="user 1"):
        target_ranks(scores, torch.tensor([1, 0]))  # 0 is padding, not an item
    with pytest.raises(ValueError, match="user 0"):
        target_ranks(scores, torch.tensor([4, 1]))  # N = 3


def test_target_ranks_matches_slow_reference():
    # Parity: integer-valued scores make ties frequent; compare with a per-user Python loop.
    gen = torch.Generator().manual_seed(0)
    batch, width = 64, 30
    scores = torch.randint(0, 5, (batch, width), generator=gen).float()
    targets = torch.randint(1, width, (batch,), generator=gen)
    exclude = torch.rand(batch, width, generator=gen) < 0.3
    with torch.no_grad():
        ranks, num = target_ranks(scores, targets, exclude)
    for b in range(batch):
        t = int(targets[b])
        cands = [j for j in range(1, width) if j == t or not exclude[b, j]]
        higher = sum(scores[b, j] > scores[b, t] for j in cands)
        ties = sum(scores[b, j] == scores[b, t] for j in cands if j != t)
        assert int(ranks[b]) == 1 + higher + ties
        assert int(num[b]) == len(cands)


# ----------------------------------------------------------------------------- seen_mask


def test_seen_mask_from_ragged_histories():
    # user 0 saw [3, 1], user 1 saw nothing, user 2 saw [2, 2] (a repeat); N + 1 = 5 columns.
    hist_items = torch.tensor([3, 1, 2, 2])
    hist_offsets = torch.tensor([0, 2, 2, 4])
    mask = seen_mask(hist_items, hist_offsets, 5)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [
        [False, True, False, True, False],
        [False, False, False, False, False],
        [False, False, True, False, False],
    ]


def test_seen_mask_rejects_bad_offsets():
    with pytest.raises(ValueError):
        seen_mask(torch.tensor([1, 2, 3]), torch.tensor([0, 2]), 5)  # offsets end at 2, not 3


def test_seen_mask_feeds_target_ranks():
    # scores [pad, 0.9, 0.7, 0.3, 0.8]; user 0 saw [1, 4] and target 3 -> rank 2 (as above);
    # user 1 saw [3] = its own target 3 -> target kept, items 1, 2, 4 higher -> rank 4, N = 4.
    scores = torch.tensor([[0.0, 0.9, 0.7, 0.3, 0.8]]).repeat(2, 1)
    mask = seen_mask(torch.tensor([1, 4, 3]), torch.tensor([0, 2, 3]), 5)
    ranks, num = target_ranks(scores, torch.tensor([3, 3]), mask)
    assert ranks.tolist() == [2, 4] and num.tolist() == [2, 4]


# ----------------------------------------------------------------------------- metrics


def test_metric_names_order():
    assert KS == (1, 5, 10, 20, 50)
    assert metric_names() == [
        "HR@1", "HR@5", "HR@10", "HR@20", "HR@50",
        "NDCG@1", "NDCG@5", "NDCG@10", "NDCG@20", "NDCG@50",
        "MRR", "AUC", "score",
    ]


def test_per_user_metrics_hand_values():
    # N = 100 candidates for every user; ranks chosen so log2(r + 1) is an integer:
    # r = 1 -> 1/log2(2) = 1;  r = 3 -> 1/log2(4) = 0.5;  r = 7 -> 1/log2(8) = 1/3;
    # r = 31 -> 1/log2(32) = 0.2;  r = 63 -> beyond every K in KS, so every NDCG is 0.
    ranks = torch.tensor([1, 3, 7, 31, 63])
    m = per_user_metrics(ranks, torch.full((5,), 100))
    assert list(m) == metric_names()
    assert all(v.dtype == torch.float64 and v.shape == (5,) for v in m.values())
    assert m["HR@1"].tolist() == [1, 0, 0, 0, 0]
    assert m["HR@5"].tolist() == [1, 1, 0, 0, 0]
    assert m["HR@10"].tolist() == [1, 1, 1, 0, 0]
    assert m["HR@20"].tolist() == [1, 1, 1, 0, 0]
    assert m["HR@50"].tolist() == [1, 1, 1, 1, 0]
    _close(m["NDCG@1"].tolist(), [1, 0, 0, 0, 0])
    _close(m["NDCG@5"].tolist(), [1, 0.5, 0, 0, 0])
    _close(m["NDCG@10"].tolist(), [1, 0.5, 1 / 3, 0, 0])
    _close(m["NDCG@20"].tolist(), [1, 0.5, 1 / 3, 0, 0])
    _close(m["NDCG@50"].tolist(), [1, 0.5, 1 / 3, 0.2, 0])
    _close(m["MRR"].tolist(), [1, 1 / 3, 1 / 7, 1 / 31, 1 / 63])
    # AUC = (N - r) / (N - 1) = (100 - r) / 99
    _close(m["AUC"].tolist(), [1, 97 / 99, 93 / 99, 69 / 99, 37 / 99])
    # score = 0.31 * HR@10 + 0.69 * NDCG@10:
    # r=1: 0.31 + 0.69 = 1.0;  r=3: 0.31 + 0.345 = 0.655;  r=7: 0.31 + 0.23 = 0.54;  else 0.
    _close(m["score"].tolist(), [1.0, 0.655, 0.54, 0, 0])


def test_rank_two_ndcg():
    # r = 2 -> NDCG@5 = 1/log2(3) = 0.63092975357...; the tie case above (rank 3) gives 0.5.
    m = per_user_metrics(torch.tensor([2, 3]), torch.tensor([4, 4]))
    _close(m["NDCG@5"].tolist(), [0.6309297535714575, 0.5])
    # rank 3 of N = 4: AUC = (4 - 3) / 3 = 1/3; score = 0.31 * 1 + 0.69 * 0.5 = 0.655.
    _close(m["AUC"][1].item(), 1 / 3)
    _close(m["score"][1].item(), 0.655)


def test_auc_known_n_and_single_candidate():
    # N = 101: r = 1 -> 100/100 = 1;  r = 51 -> 50/100 = 0.5;  r = 101 -> 0/100 = 0.
    # N = 1 (only the target is left): nothing to rank against, AUC defined as 1.0.
    m = per_user_metrics(torch.tensor([1, 51, 101, 1]), torch.tensor([101, 101, 101, 1]))
    _close(m["AUC"].tolist(), [1.0, 0.5, 0.0, 1.0])


def test_accumulator_two_batches_equals_mean_over_users():
    acc = MetricAccumulator()
    acc.add(torch.tensor([1, 3]), torch.tensor([100, 100]))
    acc.add(torch.tensor([7, 31, 63]), torch.tensor([100, 100, 100]))
    res = acc.result("full")
    assert res["num_users"] == 5 and isinstance(res["num_users"], int)
    assert res["protocol"] == "full"
    assert set(res) == set(metric_names()) | {"num_users", "protocol"}
    # Means over the 5 users of the hand values in test_per_user_metrics_hand_values:
    _close(res["HR@10"], 3 / 5)  # 0.6
    _close(res["HR@50"], 4 / 5)
    _close(res["NDCG@10"], (1 + 0.5 + 1 / 3) / 5)  # 0.3666...
    _close(res["MRR"], (1 + 1 / 3 + 1 / 7 + 1 / 31 + 1 / 63) / 5)
    _close(res["AUC"], (99 + 97 + 93 + 69 + 37) / 99 / 5)
    _close(res["score"], (1.0 + 0.655 + 0.54) / 5)  # 0.439
    # And in general: the same as per_user_metrics over the concatenated batch.
    whole = per_user_metrics(torch.tensor([1, 3, 7, 31, 63]), torch.full((5,), 100))
    for name in metric_names():
        _close(res[name], whole[name].mean().item())


def test_accumulator_empty_raises():
    with pytest.raises(ValueError):
        MetricAccumulator().result("full")


# ----------------------------------------------------------------------------- sampled protocol


def test_sampled_ranks_hand_case():
    # row 0: target 0.5 vs [0.9, 0.5, 0.1, 0.2] -> 1 + 1 higher + 1 tie = 3.
    # row 1: target 1.0 vs [0.1, 0.2, 0.3, 0.4] -> 1.
    # row 2: target NaN -> last, 1 + 4 = 5.
    # row 3: target 0.3 vs [nan, 0.1, 0.2, 0.6] -> NaN counts against it, 0.6 higher -> 3.
    target = torch.tensor([0.5, 1.0, NAN, 0.3])
    cands = torch.tensor(
        [[0.9, 0.5, 0.1, 0.2], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], [NAN, 0.1, 0.2, 0.6]]
    )
    ranks, num = sampled_ranks(target, cands)
    assert ranks.tolist() == [3, 1, 5, 3]
    assert num.tolist() == [5, 5, 5, 5]
    m = per_user_metrics(ranks, num)
    # rank 3 of N = 5: AUC = (5 - 3) / 4 = 0.5; NDCG@10 = 1/log2(4) = 0.5.
    _close(m["AUC"][0].item(), 0.5)
    _close(m["NDCG@10"][0].item(), 0.5)


def _histories():
    # N = 12 items; user 0 saw [1, 2, 3] target 4 -> allowed {5..12};
    # user 1 saw [12, 5, 5] target 6 -> allowed {1..4, 7..11}; user 2 saw nothing, target 1.
    hist_items = torch.tensor([1, 2, 3, 12, 5, 5])
    hist_offsets = torch.tensor([0, 3, 6, 6])
    targets = torch.tensor([4, 6, 1])
    return hist_items, hist_offsets, targets


@pytest.mark.parametrize("max_rounds", [64, 0])  # 0 forces the exact fallback for every row
def test_sample_candidates_valid_and_reproducible(max_rounds):
    hist_items, hist_offsets, targets = _histories()
    out = sample_candidates(torch.Generator().manual_seed(7), hist_items, hist_offsets, targets, 12, n=6,
                            max_rounds=max_rounds)
    again = sample_candidates(torch.Generator().manual_seed(7), hist_items, hist_offsets, targets, 12, n=6,
                              max_rounds=max_rounds)
    assert out.shape == (3, 6) and out.dtype == torch.int64
    assert torch.equal(out, again)
    forbidden = [{0, 1, 2, 3, 4}, {0, 12, 5, 6}, {0, 1}]
    for row, bad in zip(out.tolist(), forbidden):
        assert len(set(row)) == 6  # distinct
        assert all(1 <= v <= 12 and v not in bad for v in row)


def test_sample_candidates_exact_complement():
    # N = 1000, user saw 1..994, target 995 -> exactly 5 allowed items: all of them come back.
    hist = torch.arange(1, 995)
    out = sample_candidates(torch.Generator().manual_seed(0), hist, torch.tensor([0, 994]),
                            torch.tensor([995]), 1000, n=5)
    assert sorted(out[0].tolist()) == [996, 997, 998, 999, 1000]


def test_sample_candidates_too_few_raises_naming_user():
    hist_items, hist_offsets, targets = _histories()
    # user 0 has 8 allowed items, user 1 has 9, user 2 has 11: n = 9 fails on user 0.
    with pytest.raises(ValueError, match="user 0"):
        sample_candidates(torch.Generator().manual_seed(0), hist_items, hist_offsets, targets, 12, n=9)


@pytest.mark.parametrize("max_rounds", [64, 0])
def test_sample_candidates_uniform_subsets(max_rounds):
    # N = 6, every user saw [1], target 2 -> allowed {3, 4, 5, 6}; n = 2 -> 6 possible pairs,
    # each expected 6000 / 6 = 1000 times (std about 29); allow +-150.
    batch = 6000
    hist_items = torch.ones(batch, dtype=torch.int64)
    hist_offsets = torch.arange(batch + 1)
    targets = torch.full((batch,), 2)
    out = sample_candidates(torch.Generator().manual_seed(1), hist_items, hist_offsets, targets, 6, n=2,
                            max_rounds=max_rounds)
    pairs = out.sort(dim=1).values
    codes = pairs[:, 0] * 10 + pairs[:, 1]
    counts = {int(c): int(n) for c, n in zip(*codes.unique(return_counts=True))}
    assert set(counts) == {34, 35, 36, 45, 46, 56}
    assert all(abs(n - 1000) < 150 for n in counts.values()), counts


def test_no_grad_and_device():
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.5, 0.1]], requires_grad=True)
    with torch.no_grad():
        ranks, num = target_ranks(scores * 1.0, torch.tensor([2]))
    assert ranks.device == scores.device and ranks.tolist() == [3]
    assert not math.isnan(per_user_metrics(ranks, num)["AUC"].item())
