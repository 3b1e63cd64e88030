"""Rules every layout reader applies to values as they enter (V1 today, V2 with the same calls).

Each rule is checked once, where the value is read, so nothing downstream has to guess:
- `finite_float32`: a continual value must be a number that float32 holds (1e300 is not: it would
  become inf, and one inf or NaN item tops every ranking);
- `feature_id_problem`: a feature id names torch modules, so it may not contain '.', be empty, or
  be one of nn.ModuleDict's own attribute names;
- `check_schema_document`: schema.json is an object of known groups, each a list of feature ids;
- `show`: a value for an error message, bounded in length and depth (a 2,000-deep JSON list makes
  `repr` raise RecursionError).
DataError is imported where raised (dataset.py imports this module).
"""
from __future__ import annotations

import math
import re
import reprlib

import numpy as np

FLOAT32_MAX = 3.4028234663852886e38
SCHEMA_GROUPS = ("user_sparse", "user_array", "user_continual",
                 "item_sparse", "item_array", "item_continual")
SCHEMA_KEYS = SCHEMA_GROUPS + ("mm_emb_ids",)
_FEATURE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 3, 60, 60, 6, 4


def show(value) -> str:
    """repr(value), at most ~100 characters and 3 levels deep; never raises RecursionError."""
    return _repr.repr(value)


def finite_float32(value) -> float | None:
    """A JSON number -> float, or None when it is not a number float32 holds finitely.

    bool is not a number here (JSON true is not 1.0); ints beyond float64 overflow -> None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    if not math.isfinite(x) or abs(x) > FLOAT32_MAX:
        return None
    return x


def not_finite_float32(values) -> np.ndarray:
    """(n,) numbers -> (n,) bool: the values finite_float32 rejects (NaN, +-inf, beyond float32),
    vectorised for the column-wise readers (V2 parquet)."""
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(x) | (np.abs(x) > FLOAT32_MAX)


def feature_id_problem(fid) -> str | None:
    """Why `fid` cannot be a feature id, or None when it can."""
    if not isinstance(fid, str) or not _FEATURE_ID.match(fid):
        return (f"feature id {show(fid)} is not 1-64 letters, digits, '_' or '-' (ids name "
                "model modules: '.' and other characters are not allowed)")
    if not fid.isdigit() and fid in _reserved_names():
        return f"feature id {fid!r} is a reserved name of torch's nn.ModuleDict"
    return None


def _reserved_names() -> frozenset:
    # Imported only for a non-numeric id (the competition's ids are digits): torch is slow to load.
    import torch.nn as nn
    return frozenset(dir(nn.ModuleDict))


def check_feature_id(fid, where: str) -> str:
    """fid, or DataError naming `where`."""
    problem = feature_id_problem(fid)
    if problem:
        from dataset import DataError
        raise DataError(f"{where}: {problem}")
    return fid


def check_schema_document(doc, path) -> dict[str, list[str]]:
    """A parsed schema.json -> {group: [feature ids]} (groups absent -> []), or DataError.

    Unknown keys (a misspelled group) and groups that are not lists of ids are errors: a
    silently ignored group would drop its features from the model."""
    from dataset import DataError
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object of feature groups, got "
                        f"{type(doc).__name__}")
    unknown = sorted(set(doc) - set(SCHEMA_KEYS))
    if unknown:
        raise DataError(f"{path}: unknown key {unknown[0]!r}; the keys are {', '.join(SCHEMA_KEYS)}")
    out, owner = {}, {}
    for key in SCHEMA_KEYS:
        ids = doc.get(key, [])
        if not isinstance(ids, list):
            raise DataError(f"{path}: key {key!r}: expected a list of feature ids, got "
                            f"{type(ids).__name__} {show(ids)}")
        for fid in ids:
            check_feature_id(fid, f"{path}: key {key!r}")
            if key != "mm_emb_ids" and fid in owner:
                raise DataError(f"{path}: feature {fid!r} is in both {owner[fid]!r} and {key!r}")
            owner.setdefault(fid, key)
        out[key] = list(ids)
    return out
