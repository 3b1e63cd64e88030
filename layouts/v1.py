"""The V1 layout's parse (../shared/docs/data-format.md): seq.jsonl + seq_offsets.pkl,
indexer.pkl, item_feat_dict.json, creative_emb/ (and an optional schema.json a converter wrote)
-> the `dataset.Dataset` every layout yields.

`dataset.load_dataset` calls `require_files`, `input_files` (the cache key) and `parse_v1`;
inference (layouts/inference_v1.py) reuses `load_item_feat_dict` and `decode_records`.
The pieces both layouts share (feature tables, schema discovery, the indexer and pickle checks,
the multimodal conversion) stay in dataset.py, which imports this module inside load_dataset.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from layouts.data_rules import finite_float32, show
from dataset import (ACTION_NULL, TOKEN_ITEM, TOKEN_PROFILE, BadRecords, DataError, Dataset,
                     FeatureTables, SequenceData, check_indexer, convert_mm_tables,
                     discover_schema, fill_feature_tables, find_mm_source, json_loads,
                     load_pickle_checked, mm_dim, read_schema_json)

log = logging.getLogger(__name__)

V1_REQUIRED = ("seq.jsonl", "seq_offsets.pkl", "indexer.pkl", "item_feat_dict.json")


def require_files(data_dir: Path) -> None:
    """DataError naming the first of the four files a V1 directory needs that is missing."""
    for p in (data_dir / n for n in V1_REQUIRED):
        if not p.exists():
            raise DataError(f"{p}: missing (a V1 data directory needs seq.jsonl, seq_offsets.pkl, "
                            "indexer.pkl and item_feat_dict.json)")


def input_files(data_dir: Path) -> list[Path]:
    """The files whose names, sizes and times key the cache entry of a V1 parse."""
    files = [data_dir / n for n in ("seq.jsonl", "seq_offsets.pkl", "indexer.pkl",
                                    "item_feat_dict.json", "schema.json")]
    emb = data_dir / "creative_emb"
    if emb.is_dir():
        files += sorted(p for p in emb.rglob("*") if p.is_file())
    if (data_dir / "mm_emb").is_dir():
        files += sorted(p for p in (data_dir / "mm_emb").rglob("*") if p.is_file())
    return [p for p in files if p.exists()]


def parse_v1(data_dir: Path, mm_emb_ids: list[str], on_bad_record: str,
             mm_dir: Path | None = None) -> Dataset:
    """The V1 directory `data_dir` parsed; mm_dir: where the multimodal tables are converted."""
    bad = BadRecords(on_bad_record)
    indexer = load_pickle_checked(data_dir / "indexer.pkl")
    check_indexer(indexer, data_dir / "indexer.pkl")
    itemnum, usernum = len(indexer["i"]), len(indexer["u"])
    item_feats = load_item_feat_dict(data_dir / "item_feat_dict.json", itemnum, bad)
    lines = _parse_sequences(data_dir, itemnum, usernum, bad, item_feats)
    for reid, feats in lines.record_item_feats.items():  # items missing from item_feat_dict
        item_feats.setdefault(reid, feats)
    schema = discover_schema(data_dir, indexer["f"], lines.user_feats, item_feats)
    schema.mm_dims = {fid: mm_dim(find_mm_source(data_dir, fid)) for fid in mm_emb_ids}
    tables = FeatureTables(
        *fill_feature_tables(item_feats, itemnum, schema, "item", bad,
                             str(data_dir / "item_feat_dict.json")),
        *fill_feature_tables(lines.user_feats, usernum, schema, "user", bad, lines.profile_where),
        mm=convert_mm_tables(data_dir, mm_emb_ids, indexer["i"], itemnum, mm_dir, on_bad_record),
    )
    seqs, stats = lines.seqs, {"lines_without_items": lines.lines_without_items}
    item_valid = np.zeros(itemnum + 1, dtype=bool)
    item_valid[list(item_feats)] = True
    stats["bad_records_skipped"] = bad.count
    if seqs.num_lines == 0:
        raise DataError(f"{data_dir / 'seq.jsonl'}: no user has any item: the dataset is empty")
    log.info("parsed %s: %d users with items, %d items, %d tokens, %d lines skipped (no items), "
             "%d bad records skipped", data_dir, seqs.num_lines, itemnum, len(seqs.tok_id),
             stats["lines_without_items"], bad.count)
    return Dataset(schema, seqs, tables, itemnum, usernum, item_valid, stats)


def load_item_feat_dict(path: Path, itemnum: int, bad: BadRecords) -> dict[int, dict]:
    try:
        raw = json_loads(path.read_bytes())
    except ValueError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object of item reid -> features")
    feats = {}
    for key, value in raw.items():
        reid = int(key) if key.isascii() and key.isdecimal() else -1
        if not 1 <= reid <= itemnum:
            bad(f"{path}: key {show(key)} is not an item reid in 1..{itemnum} (indexer.pkl 'i')")
        elif not isinstance(value, dict):
            bad(f"{path}: key {show(key)}: expected a feature object, got {type(value).__name__}")
        else:
            feats[reid] = value
    return feats


@dataclass
class _ParsedLines:
    seqs: SequenceData
    user_feats: dict[int, dict]        # user reid -> profile features
    profile_where: dict[int, str]      # user reid -> "seq.jsonl:line" of its profile, for errors
    record_item_feats: dict[int, dict]  # reid -> features of its first record, for items that
    #                                     item_feat_dict.json lacks
    lines_without_items: int


def _parse_sequences(data_dir: Path, itemnum: int, usernum: int, bad: BadRecords,
                     known_items: dict) -> _ParsedLines:
    path = data_dir / "seq.jsonl"
    keep_empty_items = _declares_no_item_features(data_dir)
    offsets = _checked_offsets(data_dir / "seq_offsets.pkl")
    tok_id, tok_type, tok_action, line_lens, line_user, line_profile = [], [], [], [], [], []
    user_feats, record_item_feats, profile_where, empty = {}, {}, {}, 0
    line_of_user: dict[int, int] = {}  # user reid -> its line, to report a second line
    position, lineno, resorted = 0, 0, 0
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc="parse seq.jsonl", disable=None, leave=False) as bar:
        for lineno, line in enumerate(f, 1):
            _check_offset(offsets, lineno, position, data_dir)
            position += len(line)
            bar.update(len(line))
            parsed = _parse_line(line, path, lineno, itemnum, usernum, bad, keep_empty_items)
            if parsed is None:
                continue
            user, profile, items = parsed
            if user and user in line_of_user:  # counted twice: it could be in train and valid
                bad(f"{path}:{lineno}: user {user} already has line {line_of_user[user]}: "
                    "seq.jsonl holds one line per user")
                continue
            line_of_user[user] = lineno
            if not items:
                empty += 1  # a user with no items has nothing to learn from: skipped, counted
                continue
            if _out_of_time_order(items):
                items.sort(key=lambda rec: rec[3])  # stable: equal timestamps keep file order
                resorted += 1
            if profile is not None:
                user_feats[user] = profile
                profile_where[user] = f"{path}:{lineno}"
            for reid, feats, _, _ in items:
                if reid not in known_items and reid not in record_item_feats:
                    record_item_feats[reid] = feats
            has = profile is not None
            ids = [user] * has + [i for i, _, _, _ in items]
            tok_id += ids
            tok_type += [TOKEN_PROFILE] * has + [TOKEN_ITEM] * len(items)
            tok_action += [0] * has + [a for _, _, a, _ in items]
            line_lens.append(len(ids))
            line_user.append(user)
            line_profile.append(has)
    if len(offsets) != lineno:
        raise DataError(f"{data_dir / 'seq_offsets.pkl'}: holds {len(offsets)} offsets but "
                        f"{path} has {lineno} lines")
    if resorted:
        log.warning("%s: %d lines had item records out of timestamp order: sorted by timestamp",
                    path, resorted)
    seqs = SequenceData(
        tok_id=np.asarray(tok_id, dtype=np.int32),
        tok_type=np.asarray(tok_type, dtype=np.int8),
        tok_action=np.asarray(tok_action, dtype=np.int8),
        line_offsets=np.concatenate([[0], np.cumsum(line_lens, dtype=np.int64)]).astype(np.int64),
        line_user=np.asarray(line_user, dtype=np.int32),
        has_profile=np.asarray(line_profile, dtype=bool),
    )
    return _ParsedLines(seqs, user_feats, profile_where, record_item_feats, empty)


def _checked_offsets(path: Path) -> np.ndarray:
    """seq_offsets.pkl as a 1-D int64 array, or DataError."""
    raw = load_pickle_checked(path)
    if not isinstance(raw, list | tuple | np.ndarray):
        raise DataError(f"{path}: expected a list of byte offsets, got {type(raw).__name__}")
    if not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in
               (raw.ravel().tolist() if isinstance(raw, np.ndarray) else raw)):
        raise DataError(f"{path}: expected a flat list of integer byte offsets")
    try:
        return np.asarray(raw, dtype=np.int64).reshape(-1)
    except OverflowError:
        raise DataError(f"{path}: an offset is out of range") from None


def _declares_no_item_features(data_dir: Path) -> bool:
    """A converted dataset without item features (schema.json lists none) writes `{}` as each
    record's item features; the baseline's rule would drop every item of it."""
    schema = read_schema_json(data_dir / "schema.json")
    groups = ("item_sparse", "item_array", "item_continual", "mm_emb_ids")
    return schema is not None and not any(schema[g] for g in groups)


def _check_offset(offsets, lineno: int, position: int, data_dir: Path) -> None:
    k = lineno - 1
    if k >= len(offsets) or int(offsets[k]) != position:
        got = offsets[k] if k < len(offsets) else "nothing"
        raise DataError(f"{data_dir / 'seq_offsets.pkl'}: entry {k} is {got} but line {lineno} of "
                        f"seq.jsonl starts at byte {position}: the offsets do not match seq.jsonl")


def decode_records(line: bytes, where: str, bad: BadRecords) -> list | None:
    """One seq.jsonl line -> its list of records, or None (reported to `bad`)."""
    try:
        records = json_loads(line)
    except (ValueError, RecursionError) as e:  # the plain-json fallback recurses per level
        bad(f"{where}: invalid JSON ({type(e).__name__}: {e})")
        return None
    if not isinstance(records, list):
        bad(f"{where}: expected a JSON array of records, got {type(records).__name__}")
        return None
    return records


def _parse_line(line: bytes, path: Path, lineno: int, itemnum: int, usernum: int,
                bad: BadRecords, keep_empty_items: bool = False):
    """-> (user reid, profile features or None, [(item reid, item features, action, timestamp)])
    or None (reported to `bad`)."""
    where = f"{path}:{lineno}"
    records = decode_records(line, where, bad)
    if records is None:
        return None
    user, profile, items = 0, None, []
    for n, rec in enumerate(records):
        # Fast path for the common, well-formed item record; everything else is validated below.
        if type(rec) is list and len(rec) == 6:
            u, i, u_feat, i_feat, action, ts = rec
            if (type(i) is int and 0 < i <= itemnum and type(i_feat) is dict and u_feat is None
                    and (u is None or type(u) is int and 0 <= u <= usernum
                         and (not u or not user or u == user))
                    and (action is None or type(action) is int and -127 <= action <= 127)
                    and (type(ts) is int or ts is None)):
                user = user or u or 0
                if i_feat or keep_empty_items:
                    items.append((i, i_feat, ACTION_NULL if action is None else action, ts))
                continue
        checked = _check_record(rec, f"{where}: record {n}", itemnum, usernum, bad)
        if checked is None:
            continue
        u, i, u_feat, i_feat, action, ts = checked
        if u and user and u != user:  # two users' records run together: neither line is sure
            bad(f"{where}: record {n} names user {u} but earlier records name user {user}: "
                "one line holds one user's records")
            return None
        user = user or u or 0
        # As the baseline: a profile needs a user id and features, an item an id and features
        # (an empty feature dict too, when schema.json says the data has no item features).
        if u and u_feat:
            profile = u_feat
        if i and (i_feat or (keep_empty_items and i_feat == {})):
            items.append((i, i_feat, ACTION_NULL if action is None else action, ts))
    if items and not user:
        bad(f"{where}: no record names the user id")
        return None
    return user, profile, items


def _check_record(rec, where: str, itemnum: int, usernum: int, bad: BadRecords):
    """-> (u, i, user features, item features, action, timestamp) of a valid record, else None
    (reported)."""
    if not isinstance(rec, list) or len(rec) != 6:
        bad(f"{where}: expected [user_id, item_id, user_feature, item_feature, action_type, "
            f"timestamp], got {show(rec)}")
        return None
    u, i, u_feat, i_feat, action, ts = rec
    if not _valid_id(u, usernum) or not _valid_id(i, itemnum):
        bad(f"{where}: user id {show(u)} / item id {show(i)} outside the indexer "
            f"(users 1..{usernum}, items 1..{itemnum})")
        return None
    if action is not None and (not isinstance(action, int) or isinstance(action, bool)):
        bad(f"{where}: action_type must be an integer or null, got {show(action)}")
        return None
    if action is not None and not -127 <= action <= 127:
        action = 127 if action > 0 else -127  # unknown types are their own class; int8 holds them
    for feats, name in ((u_feat, "user_feature"), (i_feat, "item_feature")):
        if feats and not isinstance(feats, dict):
            bad(f"{where}: {name} must be an object or null, got {type(feats).__name__}")
            return None
    if ts is not None and finite_float32(ts) is None and type(ts) is not int:
        bad(f"{where}: timestamp must be a number or null, got {show(ts)}")
        return None
    return u, i, u_feat, i_feat, action, ts


def _out_of_time_order(items: list) -> bool:
    """True when the items' timestamps (all numbers) are not in ascending order; a null
    timestamp anywhere leaves the line in file order (nothing to sort it by)."""
    ts = [rec[3] for rec in items]
    if any(t is None for t in ts):
        return False
    return any(b < a for a, b in zip(ts, ts[1:]))


def _valid_id(x, n: int) -> bool:
    return x is None or (isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= n)
