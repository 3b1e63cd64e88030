"""Writer of the V2 layout (the public parquet release, ../shared/docs/data-format-v2.md).

`write_v2_dataset` takes the same raw input as `layouts.write_v1.write_v1_dataset` (and assigns ids the
same way, first-seen order), so one dataset written both ways parses to identical arrays. It writes

    seq/part-*.parquet        user_id int64, seq list<struct<item_id int64, action_type int32
                              (nullable), timestamp int64>>
    user_feat/part-*.parquet  user_id + one column per user feature (int64, list<int64>, float64)
    item_feat/part-*.parquet  item_id + one column per item feature, a row for every item RID
    indexer.pkl               plain dicts: 'u' raw user id -> RID, 'i' OID -> RID, 'f', 'a'
    mm_emb/emb_<fid>_<dim>_parquet/part-*.parquet   anonymous_cid (string OID), emb list<double>
    candidate/part-*.parquet  (optional) in the public or the official infer.py schema
    schema.json               (optional) the feature groups; the public release has none

The low-level table builders (`seq_table`, `write_parts`) also serve make_large_data.py.
Every directory is built in a temporary sibling and renamed into place at the end.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from layouts import write_v1 as v1
from layouts.write_v1 import RawId, UserHistory

CANDIDATE_SCHEMAS = ("public", "official")
SEQ_EVENT = pa.struct([("item_id", pa.int64()), ("action_type", pa.int32()),
                       ("timestamp", pa.int64())])


# --------------------------------------------------------------------------- low level

def seq_table(user_ids: np.ndarray, lengths: np.ndarray, items: np.ndarray,
              actions: np.ndarray, action_null: np.ndarray | None,
              stamps: np.ndarray) -> pa.Table:
    """One seq table: user_ids, lengths (n,); items, actions, stamps (sum(lengths),) oldest first
    per user; action_null (sum(lengths),) bool marks null action types (None: no nulls)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    events = pa.StructArray.from_arrays(
        [pa.array(np.asarray(items, np.int64)),
         pa.array(np.asarray(actions, np.int32), mask=action_null),
         pa.array(np.asarray(stamps, np.int64))], fields=list(SEQ_EVENT))
    return pa.table({"user_id": pa.array(np.asarray(user_ids, np.int64)),
                     "seq": pa.ListArray.from_arrays(pa.array(offsets), events)})


def write_parts(folder: Path, table: pa.Table, parts: int, row_group_size: int | None = None,
                tag: str = "0000") -> None:
    """`table` split into `parts` Spark-style part files (part-0000N-<tag>.parquet)."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, max(1, parts) + 1).astype(int)
    for k in range(max(1, parts)):
        chunk = table.slice(bounds[k], bounds[k + 1] - bounds[k])
        pq.write_table(chunk, folder / f"part-{k:05d}-{tag}.parquet",
                       row_group_size=row_group_size)


def _write_pickle(path: Path, obj) -> None:
    v1._write_pickle(path, obj)


# --------------------------------------------------------------------------- dataset

def write_v2_dataset(
    out_dir: str | os.PathLike,
    users: Iterable[UserHistory],
    item_features: Mapping[RawId, Mapping[str, object]],
    feature_kinds: Mapping[str, str],
    mm_embeddings: Mapping[str, Mapping[RawId, np.ndarray]] | None = None,
    candidates: Iterable[Mapping[str, Any]] | None = None,
    candidate_schema: str = "public",
    parts: int = 2,
    row_group_size: int | None = None,
    schema_json: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a V2 directory at `out_dir`; returns a summary of counts.

    users, item_features, feature_kinds, mm_embeddings: as layouts.write_v1.write_v1_dataset (ids are
    assigned identically). Raw user ids map to RIDs 1..U in `users` order; a user whose
    `features` is None gets no user_feat row. candidates: dicts {"creative_id": raw OID,
    "retrieval_id": int, "features": {fid: raw value or None}}; a value the indexer knows is
    written as its RID string, an unknown one as its raw text with cold_start (is_str) = 1, None
    as a null struct. parts: part files per folder; row_group_size: rows per row group.
    """
    if candidate_schema not in CANDIDATE_SCHEMAS:
        raise ValueError(f"candidate_schema must be one of {CANDIDATE_SCHEMAS}")
    kinds = v1._check_kinds(feature_kinds)
    indexer: dict[str, Any] = {"u": {}, "i": {}, "f": {}, "a": {0: 1, 1: 2}}
    item_table: list[dict[str, object]] = []
    ids = v1._TrainIds(indexer, item_table)
    for raw_item, feats in item_features.items():
        v1._new_item(indexer, item_table, v1._plain(raw_item),
                     v1._map_features(feats, kinds, "item", ids))
    seq, profiles = _sequences(users, kinds, ids)
    with v1._atomic_dir(out_dir, overwrite) as tmp:
        write_parts(tmp / "seq", seq, parts, row_group_size)
        write_parts(tmp / "user_feat", _feature_table("user_id", profiles, kinds, "user"), parts,
                    row_group_size)
        write_parts(tmp / "item_feat", _feature_table(
            "item_id", {r + 1: f for r, f in enumerate(item_table)}, kinds, "item"), parts,
            row_group_size)
        mm = _write_mm(tmp / "mm_emb", mm_embeddings or {})
        n_cand = 0
        if candidates is not None:
            table = candidate_table(candidates, indexer, kinds, candidate_schema)
            write_parts(tmp / "candidate", table, parts, row_group_size)
            n_cand = table.num_rows
        _write_pickle(tmp / "indexer.pkl", indexer)
        if schema_json:
            schema = {k: [f for f, kind in kinds.items() if kind == k] for k in v1.FEATURE_KINDS}
            (tmp / "schema.json").write_bytes(orjson.dumps({**schema, "mm_emb_ids": list(mm)}))
    return {"out_dir": str(out_dir), "num_users": len(indexer["u"]),
            "num_items": len(indexer["i"]), "num_lines": seq.num_rows,
            "num_item_records": int(sum(len(s) for s in seq.column("seq").to_pylist())),
            "num_profiles": len(profiles), "num_candidates": n_cand, "mm_embeddings": mm,
            "feature_vocab": {fid: len(v) for fid, v in indexer["f"].items()}}


def _sequences(users: Iterable[UserHistory], kinds, ids) -> tuple[pa.Table, dict[int, dict]]:
    """-> (seq table, {user RID: mapped profile features}); ids as layouts.write_v1 assigns them."""
    user_ids, lengths, items, actions, nulls, stamps, profiles = [], [], [], [], [], [], {}
    for user in users:
        u = ids.user(v1._plain(user.raw_user_id))
        last = -math.inf
        for raw_item, action, ts in user.events:
            if int(ts) < last:
                raise ValueError(f"user {user.raw_user_id!r}: timestamps must be ascending")
            last = int(ts)
            items.append(ids.item(v1._plain(raw_item))[0])
            actions.append(0 if action is None else int(action))
            nulls.append(action is None)
            stamps.append(int(ts))
        if user.features is not None:
            profiles[u] = v1._map_features(user.features, kinds, "user", ids)
        user_ids.append(u)
        lengths.append(len(user.events))
    table = seq_table(np.asarray(user_ids, np.int64), np.asarray(lengths, np.int64),
                      np.asarray(items, np.int64), np.asarray(actions, np.int64),
                      np.asarray(nulls, bool), np.asarray(stamps, np.int64))
    return table, profiles


def _feature_table(id_col: str, feats: Mapping[int, Mapping[str, object]],
                   kinds: Mapping[str, str], side: str) -> pa.Table:
    """One row per id: typed, nullable columns (int64 / list<int64> / float64) per feature."""
    rids = sorted(feats)
    cols: dict[str, pa.Array] = {id_col: pa.array(rids, pa.int64())}
    for fid, kind in kinds.items():
        if not kind.startswith(side):
            continue
        values = [feats[r].get(fid) for r in rids]
        if kind.endswith("array"):
            cols[fid] = pa.array([v if v else None for v in values], pa.list_(pa.int64()))
        elif kind.endswith("continual"):
            cols[fid] = pa.array(values, pa.float64())
        else:
            cols[fid] = pa.array(values, pa.int64())
    return pa.table(cols)


def _write_mm(folder: Path, mm: Mapping[str, Mapping[RawId, np.ndarray]]) -> dict[str, Any]:
    """mm_emb/emb_<fid>_<dim>_parquet/: anonymous_cid as a decimal string, emb list<double>."""
    summary = {}
    for fid, vectors in mm.items():
        rows = {str(v1._plain(c)): np.asarray(v, np.float32).reshape(-1) for c, v in vectors.items()}
        dims = {v.shape[0] for v in rows.values()}
        if len(dims) > 1:
            raise ValueError(f"multimodal feature {fid}: vectors of different sizes {sorted(dims)}")
        dim = dims.pop() if dims else 0
        table = pa.table({"anonymous_cid": pa.array(list(rows), pa.string()),
                          "emb": pa.array([v.astype(np.float64) for v in rows.values()],
                                          pa.list_(pa.float64()))})
        write_parts(folder / f"emb_{fid}_{dim}_parquet", table, 2)
        summary[str(fid)] = {"dim": dim, "count": len(rows)}
    return summary


# --------------------------------------------------------------------------- candidates

def candidate_table(candidates: Iterable[Mapping[str, Any]], indexer: dict,
                    kinds: Mapping[str, str], schema: str = "public") -> pa.Table:
    """candidate/ rows in the public schema (item_id, retrieval_id, {cold_start, feature_value})
    or the official infer.py's (creative_id, reid_creative_id, retrieval_id,
    {feature_value, is_str}). Feature values go through indexer['f']: known -> RID text,
    unknown -> raw text flagged cold (cold_start / is_str = 1), None -> a null struct."""
    flag = "cold_start" if schema == "public" else "is_str"
    struct = pa.struct([(flag, pa.int64()), ("feature_value", pa.string())])
    fids = [f for f, k in kinds.items() if k in ("item_sparse",)]
    rows = list(candidates)
    oids = [int(c["creative_id"]) for c in rows]
    cols: dict[str, pa.Array] = {}
    if schema == "public":
        cols["item_id"] = pa.array(oids, pa.int64())
    else:
        cols["creative_id"] = pa.array(oids, pa.int64())
        cols["reid_creative_id"] = pa.array([indexer["i"].get(o, 0) for o in oids], pa.int64())
    cols["retrieval_id"] = pa.array([int(c["retrieval_id"]) for c in rows], pa.int64())
    for fid in fids:
        known = indexer["f"].get(fid, {})
        values = []
        for c in rows:
            raw = (c.get("features") or {}).get(fid)
            if raw is None:
                values.append(None)
            elif v1._plain(raw) in known:
                values.append({flag: 0, "feature_value": str(known[v1._plain(raw)])})
            else:
                values.append({flag: 1, "feature_value": str(raw)})
        cols[fid] = pa.array(values, struct)
    return pa.table(cols)
