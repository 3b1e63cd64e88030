"""inputs.unique.sorted_unique (the input path's np.unique) against np.unique itself."""
from __future__ import annotations

import numpy as np
import pytest

from inputs.unique import sorted_unique


@pytest.mark.parametrize("values", [
    np.zeros(0, np.int64), np.array([7]), np.full(5, 3), np.array([5, 1, 5, 2, 1, 1]),
    np.random.default_rng(0).integers(0, 50, 1000),
    np.random.default_rng(1).integers(-10 ** 12, 10 ** 12, 5000),
    np.random.default_rng(2).integers(0, 9, (4, 6)),  # raveled, as np.unique does
])
def test_sorted_unique_equals_np_unique_with_and_without_counts(values):
    want, want_counts = np.unique(values, return_counts=True)
    got = sorted_unique(values)
    got_values, got_counts = sorted_unique(values, return_counts=True)
    assert got.dtype == values.dtype and np.array_equal(got, want)
    assert np.array_equal(got_values, want) and np.array_equal(got_counts, want_counts)


def test_sorted_unique_by_hand():
    values, counts = sorted_unique(np.array([4, 2, 4, 9, 2, 4]), return_counts=True)
    assert values.tolist() == [2, 4, 9] and counts.tolist() == [2, 3, 1]
