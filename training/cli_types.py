"""Argparse value types that check a flag's range at parse time.

Each maps the flag's text to a value or raises `argparse.ArgumentTypeError`, whose message argparse
prints as `error: argument --flag: <message>` with exit status 2, so a bad number stops the run
before any data is read, not after an epoch. Messages state the valid range.

    p.add_argument("--batch_size", type=positive_int, ...)
    p.add_argument("--dropout_rate", type=unit_interval_right_open, ...)
"""
from __future__ import annotations

import argparse
import math
import re

__all__ = ["positive_int", "non_negative_int", "finite_float", "positive_float",
           "non_negative_float", "unit_interval", "unit_interval_right_open",
           "unit_interval_open", "device_name", "int_at_least"]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int):
    """A type for integers >= low (argparse shows the function's name in some messages)."""
    def check(text: str) -> int:
        value = _int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    check.__name__ = f"int>={low}"
    return check


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (no nan, inf)."""
    return _float(text)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1]."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def unit_interval_right_open(text: str) -> float:
    """A number in [0, 1): a dropout rate (1 would drop everything and divide by zero)."""
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def unit_interval_open(text: str) -> float:
    """A number in (0, 1): an Adam beta needs both ends excluded to be a decay."""
    value = _float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def device_name(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps; whether CUDA is present is checked when it is resolved."""
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(
            f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text
