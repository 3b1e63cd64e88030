"""Checks of feature values shared by the layout readers (one rule, one place)."""
from __future__ import annotations

import math

import numpy as np


def nonfinite(values: np.ndarray) -> np.ndarray:
    """(n,) float -> (n,) bool: the continual values that are bad records (NaN, +-inf).

    A non-finite input would turn every loss that touches the item or user into NaN, so it is
    reported (and, with --on_bad_record skip, replaced by 0) instead of trained on."""
    return ~np.isfinite(np.asarray(values, dtype=np.float64))


def finite_or_none(value: float) -> float | None:
    """One continual value -> float, or None when it is not finite (the scalar form for the V1
    record-by-record parse)."""
    x = float(value)
    return x if math.isfinite(x) else None
