"""Read a V2 directory for inference (../shared/docs/data-format-v2.md §7, §9): the users of seq/
and the candidate pool of candidate/, into the `layouts.inference_v1.InferenceData` infer.py scores.

Rows of the item tables:
    0                 padding
    1..itemnum        the indexer's items, features from item_feat/ (as training)
    then              one row per distinct candidate OID, in candidate/ order: its OWN decoded
                      features (item_sparse from the structs; array / continual groups, which
                      candidate/ lacks, copied from the item's training row when it has one)
Users: one line per seq/ row (users without a usable item too: every user gets an answer); the
user rows are user RIDs, so user_emb_id is the identity. `users` holds the raw user ids
(indexer['u'] reversed).

candidate/ comes in two schemas, both read: the public one (item_id, retrieval_id,
{cold_start, feature_value} structs) and the official infer.py's (creative_id, reid_creative_id,
retrieval_id, {feature_value, is_str}). Decoding (§7): null struct or value -> 0; cold_start or
is_str = 1 -> 0; else int(feature_value), and a value outside the vocabulary (or not a decimal
number) is a cold value -> 0, counted, never an error. A candidate whose OID is not in
indexer['i'] embeds as item 0 with its own features.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import dataset as ds
from layouts import inference_v1 as inf
from layouts import v2

log = logging.getLogger(__name__)

OID_COLUMNS = ("creative_id", "item_id")  # official infer.py's name first, then the public one
COLD_FLAGS = ("cold_start", "is_str")


def load_inference_v2(data_dir: str | Path, schema: ds.FeatureSchema | None = None,
                      itemnum: int | None = None, usernum: int | None = None,
                      mm_emb_ids: list[str] | None = None,
                      on_bad_record: str = "error") -> inf.InferenceData:
    """Read a V2 `data_dir` for inference. schema/itemnum/usernum: the TRAINING ones (from the
    checkpoint); schema None rediscovers it from the directory, as training does."""
    data_dir = Path(data_dir)
    files = {name: v2.part_files(data_dir, name) for name in (*v2.FOLDERS, "candidate")}
    v2.require_folders(data_dir, files)
    if not files["candidate"]:
        raise ds.DataError(f"{data_dir / 'candidate'}: missing or without *.parquet files (V2 "
                           "inference needs the candidate pool)")
    bad, cold = ds.BadRecords(on_bad_record), inf._ColdValues()
    indexer = inf._load_indexer(data_dir, itemnum, usernum)
    itemnum, usernum = len(indexer["i"]), len(indexer["u"])
    if schema is None:
        schema = v2.discover_schema(data_dir, files, indexer["f"])
        schema.mm_dims = {fid: ds.mm_dim(ds.find_mm_source(data_dir, fid))
                          for fid in ds.resolve_mm_ids(data_dir, mm_emb_ids)}
    else:
        inf._check_vocab(schema, indexer, data_dir)
    items = v2.read_features(files["item_feat"], "item", itemnum, schema, bad)
    users = v2.read_features(files["user_feat"], "user", usernum, schema, bad)
    has_item_features = bool(schema.item_sparse or schema.item_array or schema.item_continual)
    usable = items.has_feat if has_item_features else np.arange(itemnum + 1) > 0
    seqs, _ = v2.read_sequences(files["seq"], itemnum, usernum, usable, users.has_feat, bad,
                                keep_empty=True)
    oids, rids, sparse = read_candidates(files["candidate"], schema, cold, bad)
    known = v2.item_oid_to_rid(indexer["i"])
    cand_rid = np.asarray([known.get(int(o), 0) for o in oids], np.int64)
    cand_rid[cand_rid > itemnum] = 0
    tables, item_emb_id, cand_rows = _item_rows(items, users, sparse, cand_rid, itemnum)
    # candidates' vectors by their own OID (also the unseen ones), as V1 inference does
    tables.mm = inf._mm_tables(data_dir, schema, known, itemnum, [int(o) for o in oids])
    raw_user = {rid: raw for raw, rid in indexer["u"].items()}
    names = [raw_user.get(int(u), int(u)) for u in seqs.line_user]
    stats = {"lines": seqs.num_lines, "candidates": len(oids),
             "cold_candidates": int((cand_rid == 0).sum()), "cold_feature_values": cold.count,
             "bad_records_skipped": bad.count, "cold_users": 0}
    log.info("read %s (V2): %d users, %d candidates (%d not in indexer['i']), %d cold feature "
             "values -> 0, %d bad records skipped", data_dir, stats["lines"], len(oids),
             stats["cold_candidates"], cold.count, bad.count)
    return inf.InferenceData(schema, seqs, tables, item_emb_id,
                             np.arange(usernum + 1, dtype=np.int64), itemnum, usernum, names,
                             cand_rows, oids, rids.astype(np.uint64), stats)


def _item_rows(items: v2.SideTables, users: v2.SideTables, cand_sparse: np.ndarray,
               cand_rid: np.ndarray, itemnum: int):
    """-> (FeatureTables over training rows + candidate rows, item_emb_id, candidate rows)."""
    n = len(cand_rid)
    cand_rows = np.arange(itemnum + 1, itemnum + 1 + n, dtype=np.int64)
    sparse = np.concatenate([items.sparse, cand_sparse.astype(np.int32)])
    # candidate/ carries only the sparse features: the other groups come from the training row
    array = np.concatenate([items.array, items.array[cand_rid]])
    cont = np.concatenate([items.cont, items.cont[cand_rid]])
    item_emb_id = np.concatenate([np.arange(itemnum + 1, dtype=np.int64), cand_rid])
    tables = ds.FeatureTables(sparse, array, cont, users.sparse, users.array, users.cont, mm={})
    return tables, item_emb_id, cand_rows


def candidate_item_rids(data_dir: str | Path) -> np.ndarray | None:
    """The item RIDs of candidate/ that are known items (sorted, distinct): the pool the
    offline competition protocol ranks against; None when the directory has no candidate/."""
    data_dir = Path(data_dir)
    files = v2.part_files(data_dir, "candidate")
    if not files:
        return None
    known = v2.item_oid_to_rid(inf._load_indexer(data_dir, None, None)["i"])
    rids = set()
    for path in files:
        pf = v2.open_parquet(path)
        oid_col = next((c for c in OID_COLUMNS if c in pf.schema_arrow.names), None)
        if oid_col is None:
            raise ds.DataError(f"{path}: expected an OID column (creative_id or item_id)")
        for g in range(pf.num_row_groups):
            oids, ok = v2.int_values(v2.read_row_group(pf, path, g, [oid_col]).column(oid_col),
                                     f"{path}: column {oid_col!r}")
            rids.update(known.get(int(o), 0) for o in oids[ok])
    rids.discard(0)
    return np.array(sorted(rids), np.int64)


def read_candidates(files: list[Path], schema: ds.FeatureSchema, cold: ds.BadRecords,
                    bad: ds.BadRecords) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """candidate/ -> (OIDs (N,) int64, retrieval ids (N,) int64, item_sparse (N, S) int64),
    the first row of a repeated OID kept."""
    oids, rids, feats = [], [], []
    for path in files:
        pf = v2.open_parquet(path)
        names = pf.schema_arrow.names
        oid_col = next((c for c in OID_COLUMNS if c in names), None)
        if oid_col is None or "retrieval_id" not in names:
            raise ds.DataError(f"{path}: expected an OID column (creative_id or item_id) and "
                               f"retrieval_id, got {names[:20]}")
        cols = [oid_col, "retrieval_id"] + [f for f in schema.item_sparse if f in names]
        first = 0
        for g in range(pf.num_row_groups):
            t = v2.read_row_group(pf, path, g, cols)
            where = v2.Where(path, g, first)
            o, ok_o = v2.int_values(t.column(oid_col), f"{path}: column {oid_col!r}")
            r, ok_r = v2.int_values(t.column("retrieval_id"), f"{path}: column 'retrieval_id'")
            ok = ok_o & ok_r & (r >= 0)
            v2.report(bad, ~ok, lambda i: f"{where(i)}: {oid_col} and retrieval_id must be "
                                          "non-null and retrieval_id non-negative")
            f = np.zeros((t.num_rows, len(schema.item_sparse)), np.int64)
            for j, fid in enumerate(schema.item_sparse):
                if fid in t.column_names:
                    f[:, j] = decode_feature(t.column(fid), schema.vocab.get(fid, 0), cold,
                                             f"{path}: column {fid!r}")
            oids.append(o[ok]), rids.append(r[ok]), feats.append(f[ok])
            first += t.num_rows
    oids, rids = np.concatenate(oids), np.concatenate(rids)
    feats = np.concatenate(feats)
    _, first_of = np.unique(oids, return_index=True)
    keep = np.sort(first_of)
    if len(keep) < len(oids):
        log.warning("candidate/: %d rows repeat an earlier OID; kept the first of each",
                    len(oids) - len(keep))
    if len(keep) == 0:
        raise ds.DataError(f"{files[0].parent}: no candidates")
    if len(np.unique(rids[keep])) < len(keep):
        raise ds.DataError(f"{files[0].parent}: retrieval_id values repeat; they must be unique")
    return oids[keep], rids[keep], feats[keep]


def decode_feature(col, vocab: int, cold: ds.BadRecords, where: str) -> np.ndarray:
    """One candidate feature column -> (n,) int64 feature RIDs (0: missing or cold).

    A struct {cold_start | is_str, feature_value} per the module docstring; a plain integer
    column is taken as RIDs (lenient: neither schema has one, but a converter may write it)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if v2.value_kind(col.type) in ("int", "null"):
        values, _ = v2.int_values(col, where)
    elif pa.types.is_struct(col.type) and "feature_value" in [f.name for f in col.type]:
        children = dict(zip([f.name for f in col.type], col.flatten()))  # struct nulls merged
        flag_name = next((c for c in COLD_FLAGS if c in children), None)
        text = children["feature_value"].cast(pa.string())
        is_num = pc.fill_null(pc.utf8_is_digit(text), False).to_numpy(zero_copy_only=False)
        is_num &= pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False) <= 18
        values = np.zeros(len(col), np.int64)
        values[is_num] = text.filter(pa.array(is_num)).cast(pa.int64()).to_numpy()
        warm = is_num.copy()
        if flag_name is not None:
            flag, _ = v2.int_values(children[flag_name], where)
            warm &= flag == 0
        cold.count += int((text.is_valid().to_numpy(zero_copy_only=False) & ~warm).sum())
        values = np.where(warm, values, 0)
    else:
        raise ds.DataError(f"{where}: type {col.type}; expected struct<cold_start or is_str, "
                           "feature_value> or integers")
    out_of_vocab = (values < 0) | (values > vocab)
    cold.count += int(out_of_vocab.sum())
    return np.where(out_of_vocab, 0, values)


def load_inference(data_dir: str | Path, *args, **kwargs) -> inf.InferenceData:
    """The inference reader of `data_dir`'s layout: V2 (a seq/ parquet folder) or V1."""
    if v2.is_v2(Path(data_dir)):
        return load_inference_v2(data_dir, *args, **kwargs)
    return inf.load_inference_dir(data_dir, *args, **kwargs)
