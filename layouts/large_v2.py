"""A large synthetic V2 directory in the 1M release's shape (make_large_data.py --layout v2).

Follows the spec's checklist (../shared/docs/data-format-v2.md §13), vectorized, chunk by chunk:
- seq/ (10 parts): user_id 1..U; 1-100 events (100 - Poisson(9), so about 91 on average, as
  the 1M release's 91.06) drawn from a Zipf(1) popularity, ascending Unix-second timestamps,
  ~1 % null action types, ~10 % clicks, optionally conversions (2);
- user_feat/ (10 parts): one row per user; 103 104 105 109 int64 and 106 107 108 110
  list<int64> of 1-3 values, ~20 % nulls, 103 never null (every user keeps a profile);
- item_feat/ (10 parts): one row per item RID; the 13 item_sparse columns (no 111) with the
  release's vocabulary sizes (§11), ~2 % nulls, ~70 % on 115;
- indexer.pkl: plain dicts, 'u' "user_<n>", 'i' distinct large int OIDs, 'f' the 22 fids
  (111 included) with len = vocabulary, 'a' {0: 1, 1: 2};
- candidate/ (1 part): ~13.8 % of the items (660k of 4.78M in 1M) plus 10 % unseen OIDs,
  retrieval_id 0..C-1, 13 {cold_start, feature_value} structs, some null, some cold;
- mm_emb/emb_81_32_parquet/ (optional, --mm): 87 % of the items plus the unseen candidates.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from layouts.write_v2 import seq_table

ITEM_VOCAB = {"100": 6, "101": 51, "102": 90_709, "112": 30, "114": 20, "115": 691, "116": 18,
              "117": 497, "118": 1_426, "119": 4_191, "120": 3_392, "121": 2_135_891,
              "122": 90_919}
USER_SPARSE_VOCAB = {"103": 86, "104": 2, "105": 7, "109": 3}
USER_ARRAY_VOCAB = {"106": 14, "107": 19, "108": 4, "110": 2}
VOCAB_111 = 100  # in indexer['f'] (22 namespaces) but not in item_feat, as the release
START_TS = 1_745_000_000
OID_BASE = 20_000_000_000
PARTS = 10


def _parts(n: int, parts: int) -> list[tuple[int, int]]:
    """1-based [lo, hi) RID ranges of `parts` near-equal parts of 1..n."""
    b = np.linspace(1, n + 1, parts + 1).astype(np.int64)
    return [(int(b[k]), int(b[k + 1])) for k in range(parts) if b[k + 1] > b[k]]


def _nullable(rng, values: np.ndarray, p_null: float) -> pa.Array:
    return pa.array(values, pa.int64(), mask=rng.random(len(values)) < p_null)


def write_seq(out: Path, rng, users: int, items: int, conversions: float,
              chunk: int = 20_000) -> dict:
    """seq/: row groups of `chunk` users. -> {events, null_actions}."""
    cdf = np.cumsum(1.0 / np.arange(1, items + 1))
    cdf /= cdf[-1]
    popular = rng.permutation(items) + 1  # RID of popularity rank r
    events = nulls = 0
    (out / "seq").mkdir(parents=True)
    for k, (lo, hi) in enumerate(_parts(users, PARTS)):
        with pq.ParquetWriter(out / "seq" / f"part-{k:05d}-large.parquet",
                              pa.schema([("user_id", pa.int64()),
                                         ("seq", pa.list_(seq_table([], [], [], [], None, [])
                                                          .schema.field("seq").type.value_type))])
                              ) as w:
            for start in range(lo, hi, chunk):
                ids = np.arange(start, min(start + chunk, hi))
                lengths = np.clip(100 - rng.poisson(9, len(ids)), 1, 100)
                total = int(lengths.sum())
                ranks = np.minimum(np.searchsorted(cdf, rng.random(total)), items - 1)
                u = rng.random(total)
                actions = np.where(u < 0.10, 1, 0) + np.where(u > 1 - conversions, 2, 0)
                null = rng.random(total) < 0.01
                steps = np.cumsum(rng.integers(1, 3600, total))
                start_of = np.repeat(steps[np.cumsum(lengths) - lengths], lengths)
                stamps = START_TS + steps - start_of
                w.write_table(seq_table(ids, lengths, popular[ranks], actions, null, stamps))
                events, nulls = events + total, nulls + int(null.sum())
    return {"events": events, "null_actions": nulls}


def write_user_feat(out: Path, rng, users: int, cap: int | None = None) -> None:
    (out / "user_feat").mkdir(parents=True)
    for k, (lo, hi) in enumerate(_parts(users, PARTS)):
        n = hi - lo
        cols = {"user_id": pa.array(np.arange(lo, hi), pa.int64())}
        for fid, v in _capped(USER_SPARSE_VOCAB, cap).items():
            cols[fid] = _nullable(rng, rng.integers(1, v + 1, n), 0.0 if fid == "103" else 0.2)
        for fid, v in _capped(USER_ARRAY_VOCAB, cap).items():
            lengths = rng.integers(1, 4, n)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            values = pa.array(rng.integers(1, v + 1, int(lengths.sum())), pa.int64())
            cols[fid] = pa.ListArray.from_arrays(pa.array(offsets), values,
                                                 mask=pa.array(rng.random(n) < 0.2))
        pq.write_table(pa.table(cols), out / "user_feat" / f"part-{k:05d}-large.parquet")


def write_item_feat(out: Path, rng, items: int, cap: int | None = None) -> None:
    (out / "item_feat").mkdir(parents=True)
    for k, (lo, hi) in enumerate(_parts(items, PARTS)):
        n = hi - lo
        cols = {"item_id": pa.array(np.arange(lo, hi), pa.int64())}
        for fid, v in _capped(ITEM_VOCAB, cap).items():
            cols[fid] = _nullable(rng, rng.integers(1, v + 1, n), 0.7 if fid == "115" else 0.02)
        pq.write_table(pa.table(cols), out / "item_feat" / f"part-{k:05d}-large.parquet")


def write_indexer(out: Path, oids: np.ndarray, users: int, cap: int | None = None) -> None:
    vocab = _capped({**ITEM_VOCAB, "111": VOCAB_111, **USER_SPARSE_VOCAB, **USER_ARRAY_VOCAB},
                    cap)
    indexer = {"u": {f"user_{k}": k for k in range(1, users + 1)},
               "i": dict(zip(oids.tolist(), range(1, len(oids) + 1))),
               "f": {fid: dict(zip(range(10_000_000, 10_000_000 + v), range(1, v + 1)))
                     for fid, v in vocab.items()},
               "a": {0: 1, 1: 2}}
    with open(out / "indexer.pkl", "wb") as f:
        pickle.dump(indexer, f, protocol=4)


def write_candidates(out: Path, rng, oids: np.ndarray, cap: int | None = None) -> np.ndarray:
    """candidate/: seen OIDs (~13.8 % of the items) + 10 % unseen ones. -> the unseen OIDs."""
    items = len(oids)
    seen = rng.choice(oids, max(1, int(items * 660_000 / 4_783_154)), replace=False)
    unseen = OID_BASE * 2 + np.arange(max(1, len(seen) // 10)) * 13
    cand = np.concatenate([seen, unseen])
    n = len(cand)
    cols = {"item_id": pa.array(cand, pa.int64()),
            "retrieval_id": pa.array(np.arange(n), pa.int64())}
    for fid, v in _capped(ITEM_VOCAB, cap).items():
        cold = rng.random(n) < 0.05
        value = np.where(cold, rng.integers(10**9, 2 * 10**9, n), rng.integers(1, v + 1, n))
        text = pa.array(value.astype(str), pa.string(), mask=rng.random(n) < 0.02)
        cols[fid] = pa.StructArray.from_arrays(
            [pa.array(cold.astype(np.int64)), text], names=["cold_start", "feature_value"],
            mask=pa.array(rng.random(n) < (0.7 if fid == "115" else 0.02)))
    (out / "candidate").mkdir(parents=True)
    pq.write_table(pa.table(cols), out / "candidate" / "part-00000-large.parquet")
    return unseen


def write_mm81(out: Path, rng, oids: np.ndarray, unseen: np.ndarray, chunk: int = 500_000) -> None:
    """emb_81_32_parquet: anonymous_cid strings, emb list<double> (32)."""
    folder = out / "mm_emb" / "emb_81_32_parquet"
    folder.mkdir(parents=True)
    cids = np.concatenate([oids[rng.random(len(oids)) < 0.87], unseen])
    for k, s in enumerate(range(0, len(cids), chunk)):
        c = cids[s:s + chunk]
        emb = pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(len(c) * 32)), 32)
        table = pa.table({"anonymous_cid": pa.array(c.astype(str)),
                          "emb": emb.cast(pa.list_(pa.float64()))})
        pq.write_table(table, folder / f"part-{k:05d}-large.parquet")


def _capped(vocab: dict, cap: int | None) -> dict:
    return {fid: min(v, cap) if cap else v for fid, v in vocab.items()}


def write_large_v2(out: Path, users: int, items: int, seed: int, conversions: float = 0.0,
                   mm: bool = False, vocab_cap: int | None = None) -> dict:
    """Write the whole directory; -> counts and the input bytes the parse reads.
    vocab_cap: at most this many values per feature (tests; None: the release's sizes)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    oids = OID_BASE + np.arange(items, dtype=np.int64) * 7 + rng.integers(0, 7, items)
    info = write_seq(out, rng, users, items, conversions)
    write_user_feat(out, rng, users, vocab_cap)
    write_item_feat(out, rng, items, vocab_cap)
    write_indexer(out, oids, users, vocab_cap)
    unseen = write_candidates(out, rng, oids, vocab_cap)
    if mm:
        write_mm81(out, rng, oids, unseen)
    size = lambda *names: sum(p.stat().st_size for n in names  # noqa: E731
                              for p in (out / n).glob("*.parquet"))
    info.update(users=users, items=items, tokens=info["events"] + users,
                seq_bytes=size("seq"), feat_bytes=size("user_feat", "item_feat"),
                indexer_bytes=(out / "indexer.pkl").stat().st_size)
    return info
