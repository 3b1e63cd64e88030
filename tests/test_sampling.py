"""Tests for sampling.py: exact popular share, distributions (chi-square), exclusion on
adversarial histories, reproducibility/resume, curriculum, and the batched rule on random batches.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sampling import (  # noqa: E402
    POPULARITY_SOURCES,
    RATIO_SCHEDULES,
    SmartNegativeSampler,
    build_sampler,
)

# ----------------------------------------------------------------- helpers

Z_999 = 3.090232306167813  # standard normal quantile at 0.999


def chi2_critical(df: int, z: float = Z_999) -> float:
    """Wilson-Hilferty approximation of the chi-square upper quantile (within ~0.5% for df >= 5).

    df=19 -> 43.95 (table: 43.82), so the test is at roughly alpha = 0.001.
    """
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2_statistic(draws: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """draws (n,) ids, probs (K,) by id -> (statistic, df) over the ids with positive probability.

    Draws on zero-probability ids make the statistic infinite.
    """
    observed = np.bincount(draws, minlength=probs.size).astype(np.float64)
    support = probs > 0
    if observed[~support].sum() > 0:
        return math.inf, int(support.sum()) - 1
    expected = probs[support] * draws.size
    return float(((observed[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


def flat_batch(histories: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """histories -> (hist_items (T,), hist_offsets (B+1,))."""
    lengths = [len(h) for h in histories]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = [np.asarray(h, dtype=np.int64) for h in histories]
    return np.concatenate(items) if sum(lengths) else np.zeros(0, np.int64), offsets


def assert_rule(out: np.ndarray, histories: list[list[int]], mask: np.ndarray, valid: np.ndarray) -> None:
    """Every masked output is valid, in range, not in its row's history; unmasked are 0."""
    assert out.dtype == np.int64 and out.shape == mask.shape
    assert np.all(out[~mask] == 0)
    for b, hist in enumerate(histories):
        drawn = out[b][mask[b]]
        assert np.all(drawn >= 1) and np.all(drawn <= valid.size - 1)
        assert valid[drawn].all()
        assert not np.isin(drawn, hist).any()


# Item 20 is never seen (count 0): it must get no popularity mass.
COUNTS_20 = np.array(
    [0, 500, 300, 200, 150, 100, 80, 60, 50, 40, 30, 25, 20, 15, 10, 8, 5, 3, 2, 1, 0], dtype=np.float64
)


# ----------------------------------------------------------------- popularity table


def test_counts_popularity_is_smoothed_and_zero_for_unseen():
    s = SmartNegativeSampler(20, item_counts=COUNTS_20, popularity_factor=0.75)
    expected = np.where(COUNTS_20 > 0, COUNTS_20, 0) ** 0.75
    expected[0] = 0
    np.testing.assert_allclose(s.popularity, expected / expected.sum())
    assert s.popularity[0] == 0 and s.popularity[20] == 0  # item 20 has count 0
    np.testing.assert_allclose(s._compute_item_popularity(), s.popularity)


def test_factor_zero_still_gives_unseen_items_no_mass():
    s = SmartNegativeSampler(20, item_counts=COUNTS_20, popularity_factor=0.0)
    assert s.popularity[20] == 0
    np.testing.assert_allclose(s.popularity[1:20], 1 / 19)


def test_all_zero_counts_fall_back_to_uniform_over_valid():
    valid = np.ones(11, dtype=bool)
    valid[[0, 3, 4]] = False
    s = SmartNegativeSampler(10, item_counts=np.zeros(11), valid_items=valid)
    np.testing.assert_allclose(s.popularity[valid], 1 / 8)
    assert s.popularity[0] == 0 and np.all(s.popularity[[3, 4]] == 0)


def test_power_law_popularity():
    s = SmartNegativeSampler(10, popularity_source="power_law", popularity_factor=1.0)
    expected = np.r_[0.0, 1.0 / np.arange(1, 11)]
    np.testing.assert_allclose(s.popularity, expected / expected.sum())


def test_config_errors():
    with pytest.raises(ValueError, match="item_counts"):
        SmartNegativeSampler(10)  # counts source without counts
    with pytest.raises(ValueError, match="counts, power_law"):
        SmartNegativeSampler(10, item_counts=np.ones(11), popularity_source="zipf")
    with pytest.raises(ValueError, match="constant, linear"):
        SmartNegativeSampler(10, item_counts=np.ones(11), schedule="cosine")
    with pytest.raises(ValueError, match="popular_ratio"):
        SmartNegativeSampler(10, item_counts=np.ones(11), popular_ratio=1.5)
    s = SmartNegativeSampler(10, item_counts=np.ones(11))
    with pytest.raises(ValueError, match="random_ratio"):
        s.mixed_negative_sampling([1], 5, popular_ratio=0.3, random_ratio=-0.1)
    with pytest.raises(ValueError, match="popular_ratio"):
        s.mixed_negative_sampling([1], 5, popular_ratio=2.0)
    with pytest.raises(ValueError, match="history item ids"):
        s.random_negative_sampling([11], 3)
    assert POPULARITY_SOURCES == ("counts", "power_law")
    assert RATIO_SCHEDULES == ("constant", "linear")


# ----------------------------------------------------------------- popular share


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_sample_popular_share_is_exact(ratio):
    rng = np.random.default_rng(1)
    s = SmartNegativeSampler(100, item_counts=rng.integers(0, 50, 101), popular_ratio=ratio, seed=3)
    histories = [list(rng.choice(np.arange(1, 101), size=k, replace=False)) for k in (0, 5, 40, 90)]
    items, offsets = flat_batch(histories)
    mask = rng.random((4, 37)) < 0.6
    out, source = s.sample(items, offsets, mask, return_source=True)
    n = int(mask.sum())
    assert int(source.sum()) == round(n * ratio)
    assert not source[~mask].any()
    stats = s.epoch_stats()
    assert stats["popular_ratio"] == pytest.approx(round(n * ratio) / n)


@pytest.mark.parametrize("num,ratio", [(10, 0.3), (7, 0.5), (101, 0.3), (5, 0.0), (5, 1.0)])
def test_mixed_draws_exactly_rounded_popular_count(num, ratio):
    s = SmartNegativeSampler(50, popularity_source="power_law", seed=0)
    seen = []
    real = s._sample

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append(result[1])
        return result

    s._sample = spy
    out = s.mixed_negative_sampling([1, 2, 3], num, popular_ratio=ratio, random_ratio=1 - ratio)
    assert out.shape == (num,) and out.dtype == np.int64
    assert int(seen[0].sum()) == round(num * ratio)


# ----------------------------------------------------------------- distributions (chi-square)


@pytest.mark.parametrize("source,kwargs", [("counts", {"item_counts": COUNTS_20}), ("power_law", {})])
def test_popular_draws_follow_popularity(source, kwargs):
    s = SmartNegativeSampler(20, popularity_source=source, seed=123, **kwargs)
    draws = s.popular_negative_sampling([], 20000)
    stat, df = chi2_statistic(draws, s.popularity)
    assert stat < chi2_critical(df)
    # The same test must reject uniform draws, so the check above cannot pass by accident.
    uniform = s.random_negative_sampling([], 20000)
    stat_u, df_u = chi2_statistic(uniform, s.popularity)
    assert stat_u > chi2_critical(df_u)


def test_uniform_draws_are_uniform_over_valid():
    valid = np.ones(21, dtype=bool)
    valid[[2, 9]] = False
    s = SmartNegativeSampler(20, item_counts=COUNTS_20, valid_items=valid, seed=5)
    probs = valid.astype(np.float64)
    probs[0] = 0
    probs /= probs.sum()
    stat, df = chi2_statistic(s.random_negative_sampling([], 20000), probs)
    assert stat < chi2_critical(df)
    stat_p, _ = chi2_statistic(s.popular_negative_sampling([], 20000), probs)
    assert stat_p > chi2_critical(df)


@pytest.mark.parametrize("rounds", [20, 0])
def test_popular_draws_with_history_follow_restricted_popularity(rounds):
    """Rejection (rounds=20) and the exact fallback (rounds=0) give the same law: popularity
    restricted to the complement of the history."""
    s = SmartNegativeSampler(20, item_counts=COUNTS_20, popular_ratio=1.0, seed=9)
    s.max_rejection_rounds = rounds
    hist = [1, 2, 5, 11]  # the head of the distribution, so most first draws are rejected
    items, offsets = flat_batch([hist] * 50)
    draws = s.sample(items, offsets, np.ones((50, 400), dtype=bool)).ravel()
    probs = s.popularity.copy()
    probs[hist] = 0
    probs /= probs.sum()
    stat, df = chi2_statistic(draws, probs)
    assert stat < chi2_critical(df)
    stat_unrestricted, _ = chi2_statistic(draws, s.popularity)
    assert stat_unrestricted > chi2_critical(df)


# ----------------------------------------------------------------- adversarial exclusion


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("rounds", [20, 0])
def test_user_with_all_but_two_items_gets_exactly_those(ratio, rounds):
    s = SmartNegativeSampler(50, item_counts=np.arange(51.0), popular_ratio=ratio, seed=2)
    s.max_rejection_rounds = rounds
    hist = [i for i in range(1, 51) if i not in (7, 33)]
    out = s.sample(*flat_batch([hist]), np.ones((1, 300), dtype=bool))
    assert set(out.ravel().tolist()) == {7, 33}
    s.dense_table_max = 0  # sorted-key membership path
    assert set(s.sample(*flat_batch([hist]), np.ones((1, 300), dtype=bool)).ravel().tolist()) == {7, 33}
    assert set(s.mixed_negative_sampling(hist, 100, 0.5).tolist()) == {7, 33}
    assert set(s.popular_negative_sampling(hist, 100).tolist()) == {7, 33}


def test_user_with_all_but_one_zero_mass_item_gets_it_by_popularity():
    counts = np.array([0, 10, 10, 0, 10], dtype=np.float64)  # item 3 has no popularity mass
    s = SmartNegativeSampler(4, item_counts=counts, seed=0)
    assert np.all(s.popular_negative_sampling([1, 2, 4], 50) == 3)


def test_itemnum_two():
    s = SmartNegativeSampler(2, item_counts=np.array([0, 5, 1]), popular_ratio=0.5, seed=0)
    assert np.all(s.random_negative_sampling([1], 20) == 2)
    assert np.all(s.popular_negative_sampling([2], 20) == 1)
    assert set(s.random_negative_sampling([], 200).tolist()) == {1, 2}
    out = s.sample(*flat_batch([[1], [2], []]), np.ones((3, 30), dtype=bool))
    assert np.all(out[0] == 2) and np.all(out[1] == 1) and set(out[2].tolist()) == {1, 2}


def test_user_with_all_items_gets_zero_and_others_are_unaffected():
    s = SmartNegativeSampler(10, item_counts=np.ones(11), popular_ratio=0.5, seed=0)
    histories = [list(range(1, 11)), [1, 2, 3]]
    mask = np.ones((2, 8), dtype=bool)
    out = s.sample(*flat_batch(histories), mask)
    assert np.all(out[0] == 0)
    assert_rule(out[1:], histories[1:], mask[1:], s.valid_items)
    assert np.all(s.random_negative_sampling(range(1, 11), 4) == 0)
    stats = s.epoch_stats()
    assert 0 < stats["neg_popularity"] <= 100  # the 0s are not counted as negatives


def test_user_with_all_valid_items_gets_zero():
    valid = np.zeros(11, dtype=bool)
    valid[[2, 5, 8]] = True
    s = SmartNegativeSampler(10, popularity_source="power_law", valid_items=valid, popular_ratio=0.5)
    assert np.all(s.mixed_negative_sampling([2, 5, 8, 1], 6, 0.5) == 0)


def test_invalid_items_are_never_drawn():
    valid = np.ones(31, dtype=bool)
    valid[1:6] = False  # the most popular ids under power_law
    for source, counts in (("power_law", None), ("counts", np.arange(31.0)[::-1].copy())):
        s = SmartNegativeSampler(30, item_counts=counts, popularity_source=source, valid_items=valid, popular_ratio=0.5)
        for draws in (s.random_negative_sampling([], 3000), s.popular_negative_sampling([6, 7], 3000)):
            assert valid[draws].all()
        assert s.popularity[~valid].sum() == 0


def test_unmasked_slots_are_zero_and_masked_never_zero():
    rng = np.random.default_rng(0)
    s = SmartNegativeSampler(15, item_counts=rng.integers(0, 9, 16), popular_ratio=0.4)
    mask = rng.random((6, 25)) < 0.5
    out = s.sample(*flat_batch([[1, 2, 3]] * 6), mask)
    assert np.all(out[~mask] == 0) and np.all(out[mask] > 0)


# ----------------------------------------------------------------- batched rule on random batches


@pytest.mark.parametrize("seed", range(6))
def test_sample_follows_rule_on_random_batches(seed):
    rng = np.random.default_rng(seed)
    itemnum = int(rng.integers(3, 200))
    valid = rng.random(itemnum + 1) < 0.9
    valid[rng.integers(1, itemnum + 1)] = True
    counts = rng.integers(0, 20, itemnum + 1)
    source = POPULARITY_SOURCES[seed % 2]
    s = SmartNegativeSampler(
        itemnum, item_counts=counts, popularity_source=source, valid_items=valid, popular_ratio=rng.random(), seed=seed
    )
    B, L = int(rng.integers(1, 16)), int(rng.integers(1, 40))
    # Histories from empty to nearly the whole catalogue, with duplicates and 0 padding.
    histories = [list(rng.integers(0, itemnum + 1, size=int(rng.integers(0, 2 * itemnum)))) for _ in range(B)]
    histories[0] = [i for i in range(1, itemnum + 1) if i != int(np.flatnonzero(valid)[-1])]
    mask = rng.random((B, L)) < 0.7
    state = s.state_dict()
    out = s.sample(*flat_batch(histories), mask)
    assert_rule(out, histories, mask, s.valid_items)
    # Parity: the sorted-key membership path (large catalogues) gives the identical output.
    s.load_state_dict(state)
    s.dense_table_max = 0
    np.testing.assert_array_equal(s.sample(*flat_batch(histories), mask), out)


# ----------------------------------------------------------------- reproducibility


def _batch():
    rng = np.random.default_rng(42)
    histories = [list(rng.choice(np.arange(1, 301), size=60, replace=False)) for _ in range(8)]
    return (*flat_batch(histories), np.ones((8, 50), dtype=bool))


def _sampler(seed):
    return SmartNegativeSampler(300, item_counts=np.arange(301.0), popular_ratio=0.3, seed=seed)


def test_same_seed_same_negatives_different_seed_different():
    a, b, c = _sampler(7), _sampler(7), _sampler(8)
    batch = _batch()
    out_a = a.sample(*batch)
    np.testing.assert_array_equal(out_a, b.sample(*batch))
    assert not np.array_equal(out_a, c.sample(*batch))
    np.testing.assert_array_equal(a.mixed_negative_sampling([1, 2], 30), b.mixed_negative_sampling([1, 2], 30))


def test_state_dict_resumes_the_same_stream():
    s = _sampler(11)
    s.set_epoch(3)
    batch = _batch()
    s.sample(*batch)
    saved = json.loads(json.dumps(s.state_dict()))  # must survive a JSON round trip
    expected = [s.sample(*batch), s.random_negative_sampling([5], 20)]

    resumed = _sampler(999)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved
    np.testing.assert_array_equal(resumed.sample(*batch), expected[0])
    np.testing.assert_array_equal(resumed.random_negative_sampling([5], 20), expected[1])


# ----------------------------------------------------------------- curriculum


def test_linear_schedule_values():
    s = SmartNegativeSampler(10, item_counts=np.ones(11), popular_ratio=0.4, schedule="linear", curriculum_epochs=5)
    assert s.current_popular_ratio == 0.0  # epoch 1 before any set_epoch
    for epoch, expected in [(1, 0.0), (2, 0.1), (3, 0.2), (4, 0.3), (5, 0.4), (6, 0.4), (50, 0.4)]:
        s.set_epoch(epoch)
        assert s.current_popular_ratio == pytest.approx(expected)
    s.set_epoch(1)
    _, source = s.sample(*flat_batch([[]]), np.ones((1, 50), dtype=bool), return_source=True)
    assert not source.any()
    with pytest.raises(ValueError):
        s.set_epoch(0)


def test_constant_schedule_and_degenerate_linear():
    s = SmartNegativeSampler(10, item_counts=np.ones(11), popular_ratio=0.25)
    for epoch in (1, 2, 10):
        s.set_epoch(epoch)
        assert s.current_popular_ratio == 0.25
    s = SmartNegativeSampler(10, item_counts=np.ones(11), popular_ratio=0.6, schedule="linear", curriculum_epochs=1)
    assert [s.set_epoch(e) or s.current_popular_ratio for e in (1, 2, 3)] == [0.0, 0.6, 0.6]


# ----------------------------------------------------------------- statistics and factory


def test_epoch_stats_percentiles_and_reset():
    counts = np.r_[0.0, np.arange(1.0, 101.0)]  # distinct counts: percentiles 0.5 .. 99.5
    s = SmartNegativeSampler(100, item_counts=counts, popular_ratio=0.0, seed=0)
    mask = np.ones((20, 100), dtype=bool)
    s.sample(*flat_batch([[]] * 20), mask)
    uniform = s.epoch_stats()
    assert uniform["popular_ratio"] == 0.0
    assert uniform["neg_popularity"] == pytest.approx(50.0, abs=1.5)
    assert all(math.isnan(v) for v in s.epoch_stats().values())  # reset after reading

    hard = SmartNegativeSampler(100, item_counts=counts, popular_ratio=1.0, popularity_factor=1.0, seed=0)
    hard.sample(*flat_batch([[]] * 20), mask)
    stats = hard.epoch_stats()
    assert stats["popular_ratio"] == 1.0
    # E[percentile] under p ~ rank: sum_i (i - 0.5) * i / sum_i i = 66.83 for 100 items.
    assert stats["neg_popularity"] == pytest.approx(66.83, abs=1.5)


def test_percentile_ties_are_averaged():
    s = SmartNegativeSampler(10, item_counts=np.r_[0.0, np.full(10, 7.0)])
    np.testing.assert_allclose(s._percentile[1:], 50.0)
    s = SmartNegativeSampler(4, item_counts=np.array([0.0, 1, 5, 5, 9]))
    np.testing.assert_allclose(s._percentile, [0.0, 12.5, 50.0, 50.0, 87.5])


def test_build_sampler_uniform_baseline_and_smart():
    args = dict(itemnum=10, item_counts=np.ones(11), valid_items=None, seed=0, popular_ratio=0.5,
                popularity_source="counts", popularity_factor=0.75, schedule="linear", curriculum_epochs=3)
    base = build_sampler(use_smart_sampling=False, **args)
    assert isinstance(base, SmartNegativeSampler)
    for epoch in (1, 5):
        base.set_epoch(epoch)
        assert base.current_popular_ratio == 0.0
    smart = build_sampler(use_smart_sampling=True, **args)
    smart.set_epoch(3)
    assert smart.current_popular_ratio == 0.5 and smart.schedule == "linear"
