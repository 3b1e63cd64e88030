"""Read a V2 data directory (the public parquet release, ../shared/docs/data-format-v2.md) into
the same `dataset.Dataset` the V1 parse gives, so everything downstream (cache, batching, model)
is shared.

    seq/*.parquet        user_id, seq: list<struct<item_id, action_type, timestamp>>
    user_feat/*.parquet  user_id + one column per user feature (int, list<int> or float)
    item_feat/*.parquet  item_id + one column per item feature
    indexer.pkl          {'u', 'i', 'f'} as in V1; sizes the tables
    mm_emb/              multimodal vectors (read by layouts/mm.py once merged; see the call site)

Each folder may hold any number of part files with any names (or be a single `<name>.parquet`).
Files are read one row group at a time, so besides the output arrays (5 bytes per token, as V1)
memory is bounded by a row group, not by the data. Integers of any width are accepted; a value
that would silently corrupt training (an id outside its table, a non-finite float, a duplicate
row) is a bad record: one line naming the part file, row group and row, and `--on_bad_record
skip` counts it instead. The official loader's semantics are kept (§9 of the spec): the profile
token is first when the user's row has a non-null feature; an event is a token only when its
item has a feature row with a non-null value (unless the data has no item features at all).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

import dataset as ds
from layouts.data_rules import check_feature_id, not_finite_float32

log = logging.getLogger(__name__)

FOLDERS = ("seq", "user_feat", "item_feat")
REQUIRED_FOLDERS = ("seq", "item_feat")
INDEXER = "indexer.pkl"
ID_COLUMN = {"user": "user_id", "item": "item_id"}
FOLDER_OF = {"user": "user_feat", "item": "item_feat"}
MM_FOLDER = "mm_emb"


# --------------------------------------------------------------------------- files

def part_files(data_dir: Path, name: str) -> list[Path]:
    """The parquet files of one table: `<name>/*.parquet` (any number and names, sorted), or a
    single `<name>.parquet`; [] when neither exists."""
    folder = Path(data_dir) / name
    if folder.is_dir():
        return sorted(p for p in folder.glob("*.parquet") if p.is_file())
    single = Path(data_dir) / f"{name}.parquet"
    return [single] if single.is_file() else []


def is_v2(data_dir: Path) -> bool:
    """A V2 directory has a seq/ folder (or seq.parquet)."""
    return (Path(data_dir) / "seq").is_dir() or (Path(data_dir) / "seq.parquet").is_file()


def input_files(data_dir: Path) -> list[Path]:
    """Every file the parse reads (for the cache key): a changed part file invalidates it."""
    files = [p for name in FOLDERS for p in part_files(data_dir, name)]
    files += [data_dir / n for n in (INDEXER, "schema.json") if (data_dir / n).is_file()]
    if (data_dir / MM_FOLDER).is_dir():
        files += sorted((data_dir / MM_FOLDER).glob("*/*.parquet"))
    return files


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:  # truncated, empty, or not parquet at all
        raise ds.DataError(f"{path}: not a readable parquet file ({_short(e)})") from None


def read_row_group(pf: pq.ParquetFile, path: Path, g: int, columns: list[str]) -> pa.Table:
    try:
        return pf.read_row_group(g, columns=columns)
    except (pa.ArrowException, OSError) as e:  # a corrupt page or a cut-off column chunk
        raise ds.DataError(f"{path}: row group {g}: unreadable ({_short(e)})") from None


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def require_folders(data_dir: Path, files: dict[str, list[Path]]) -> None:
    for name in REQUIRED_FOLDERS:
        if not files[name]:
            raise ds.DataError(f"{data_dir / name}: missing or without *.parquet files (a V2 data "
                               "directory needs seq/, item_feat/ and indexer.pkl; user_feat/ "
                               "is optional)")
    if not (data_dir / INDEXER).is_file():
        raise ds.DataError(f"{data_dir / INDEXER}: missing (a V2 data directory needs seq/, "
                           "item_feat/ and indexer.pkl)")
    if not files["user_feat"]:
        log.warning("%s: no user_feat/ parquet files: no user has a profile token", data_dir)


@dataclass
class Where:
    """Names a row for error messages: part file, row group, row within the file."""
    path: Path
    group: int
    first_row: int

    def __call__(self, i: int) -> str:
        return f"{self.path}: row group {self.group}, row {self.first_row + i}"


def report(bad: ds.BadRecords, mask: np.ndarray, describe) -> None:
    """Every True of `mask` is one bad record: raise on the first (policy error), or count all."""
    idx = np.flatnonzero(mask)
    if len(idx):
        bad(describe(int(idx[0])))
        bad.count += len(idx) - 1  # only reached with --on_bad_record skip


# --------------------------------------------------------------------------- columns

def value_kind(t: pa.DataType) -> str | None:
    """Arrow type -> 'int', 'float', 'list' (of integers), 'null' (all-null column) or None."""
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            pa.types.is_integer(t.value_type) or pa.types.is_null(t.value_type)):
        return "list"
    return None


def int_values(col, where: str) -> tuple[np.ndarray, np.ndarray]:
    """An integer (or all-null) arrow column -> (values int64 with nulls as 0, valid bool)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_null(col.type):
        return np.zeros(len(col), np.int64), valid
    if not pa.types.is_integer(col.type):
        raise ds.DataError(f"{where}: expected integers, got {col.type}")
    try:
        values = col.fill_null(0).cast(pa.int64())
    except pa.ArrowInvalid:  # uint64 beyond int64: no table has that many rows
        raise ds.DataError(f"{where}: an integer is out of range (above 2**63 - 1)") from None
    return values.to_numpy(zero_copy_only=False), valid


def float_values(col) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column -> (float64 values with nulls as 0, valid bool)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_null(col.type):
        return np.zeros(len(col)), valid
    return col.fill_null(0).cast(pa.float64()).to_numpy(zero_copy_only=False), valid


def list_lengths(col) -> np.ndarray:
    """(n,) int64 length of each list; a null list has length 0."""
    return pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def ragged_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (row of each flat element, its position within the row), for rows of `lengths`."""
    total = int(lengths.sum())
    row = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return row, pos


# --------------------------------------------------------------------------- schema

def column_kinds(files: list[Path], id_col: str) -> dict[str, str]:
    """feature id -> 'int' | 'float' | 'list', the same in every part file that has the column
    with a non-null type (a part may lack a column, or hold it as all-null)."""
    kinds: dict[str, str] = {}
    for path in files:
        schema = open_parquet(path).schema_arrow
        if id_col not in schema.names:
            raise ds.DataError(f"{path}: no column {id_col!r} (columns: {schema.names[:20]})")
        if value_kind(schema.field(id_col).type) != "int":
            raise ds.DataError(f"{path}: column {id_col!r} has type "
                               f"{schema.field(id_col).type}; expected integers")
        for f in schema:
            kind = value_kind(f.type)
            if f.name == id_col or kind == "null":
                continue
            if kind is None:
                raise ds.DataError(f"{path}: column {f.name!r} has type {f.type}; expected "
                                   "integers, floats or lists of integers")
            if kinds.setdefault(f.name, kind) != kind:
                raise ds.DataError(f"{path}: column {f.name!r} holds {kind} values here but "
                                   f"{kinds[f.name]} in an earlier part file")
    return kinds


def discover_schema(data_dir: Path, files: dict[str, list[Path]],
                    indexer_f: dict) -> ds.FeatureSchema:
    """Groups from schema.json when present, else from the column types: an integer column the
    indexer maps is sparse, a list column array, any other number continual (V1's rule)."""
    kinds = {side: column_kinds(files[FOLDER_OF[side]], ID_COLUMN[side])
             for side in ("user", "item")}
    if (data_dir / "schema.json").is_file():
        schema = ds.discover_schema(data_dir, indexer_f, {}, {})
        _check_declared(schema, kinds, data_dir)
        return schema
    schema = ds.FeatureSchema()
    for side, cols in kinds.items():
        for fid in sorted(cols, key=ds._fid_order):
            check_feature_id(fid, f"{data_dir / FOLDER_OF[side]}: column")
            if cols[fid] == "list" and fid not in indexer_f:
                raise ds.DataError(f"{data_dir / FOLDER_OF[side]}: list column {fid!r} has no "
                                   f"vocabulary in {INDEXER} 'f'")
            group = {"int": "sparse" if fid in indexer_f else "continual", "float": "continual",
                     "list": "array"}[cols[fid]]
            getattr(schema, f"{side}_{group}").append(fid)
    schema.vocab = {fid: len(indexer_f.get(fid, ())) for fid in ds._categorical_fids(schema)}
    return schema


def _check_declared(schema: ds.FeatureSchema, kinds: dict, data_dir: Path) -> None:
    allowed = {"sparse": ("int",), "array": ("list",), "continual": ("int", "float")}
    for side in ("user", "item"):
        for group, ok in allowed.items():
            for fid in getattr(schema, f"{side}_{group}"):
                kind = kinds[side].get(fid)
                if kind is not None and kind not in ok:
                    raise ds.DataError(f"{data_dir / FOLDER_OF[side]}: column {fid!r} holds "
                                       f"{kind} values but schema.json declares it {group}")


# --------------------------------------------------------------------------- feature tables

@dataclass
class SideTables:
    """One side's feature tables, by RID; row 0 stays zero."""
    sparse: np.ndarray    # (n+1, S) int32
    array: np.ndarray     # (n+1, A, W) int32
    cont: np.ndarray      # (n+1, C) float32
    has_row: np.ndarray   # (n+1,) bool: the RID has a row in the table
    has_feat: np.ndarray  # (n+1,) bool: ... with at least one non-null feature


def read_features(files: list[Path], side: str, n: int, schema: ds.FeatureSchema,
                  bad: ds.BadRecords) -> SideTables:
    """user_feat/ or item_feat/ -> SideTables of n RIDs, one row group at a time."""
    groups = [getattr(schema, f"{side}_{k}") for k in ("sparse", "array", "continual")]
    out = SideTables(np.zeros((n + 1, len(groups[0])), np.int32),
                     np.zeros((n + 1, len(groups[1]), 1), np.int32),
                     np.zeros((n + 1, len(groups[2])), np.float32),
                     np.zeros(n + 1, bool), np.zeros(n + 1, bool))
    id_col = ID_COLUMN[side]
    for path in tqdm(files, desc=f"{FOLDER_OF[side]}", disable=None, leave=False):
        pf = open_parquet(path)
        names = set(pf.schema_arrow.names)
        cols = [id_col] + [f for g in groups for f in g if f in names]
        first = 0
        for g in range(pf.num_row_groups):
            t = read_row_group(pf, path, g, cols)
            _fill_rows(t, side, n, schema, out, Where(path, g, first), bad)
            first += t.num_rows
    return out


def _fill_rows(t: pa.Table, side: str, n: int, schema: ds.FeatureSchema, out: SideTables,
               where: Where, bad: ds.BadRecords) -> None:
    id_col = ID_COLUMN[side]
    ids, valid = int_values(t.column(id_col), f"{where.path}: column {id_col!r}")
    ok = valid & (ids >= 1) & (ids <= n)
    report(bad, ~ok, lambda i: f"{where(i)}: {id_col} {ids[i] if valid[i] else None} is not a "
                               f"{side} RID in 1..{n} ({INDEXER} '{side[0]}')")
    dup = repeated_ids(ids, ok, out.has_row)
    report(bad, dup, lambda i: f"{where(i)}: {id_col} {ids[i]} has a row already")
    ok &= ~dup
    rows = ids[ok]
    out.has_row[rows] = True
    nonnull = np.zeros(len(ids), bool)
    for j, fid in enumerate(getattr(schema, f"{side}_sparse")):
        if fid in t.column_names:
            vals, v = _checked_ids(t.column(fid), schema.vocab[fid], where, fid, bad)
            out.sparse[rows, j] = vals[ok]
            nonnull |= v
    for j, fid in enumerate(getattr(schema, f"{side}_array")):
        if fid in t.column_names:
            out.array = _fill_lists(out.array, j, t.column(fid), rows, ok, schema.vocab[fid],
                                    where, fid, bad)
            nonnull |= t.column(fid).is_valid().to_numpy(zero_copy_only=False)
    for j, fid in enumerate(getattr(schema, f"{side}_continual")):
        if fid in t.column_names:
            vals, v = float_values(t.column(fid))
            wrong = not_finite_float32(vals)
            report(bad, wrong, lambda i, fid=fid: f"{where(i)}: feature {fid}: "
                   f"{vals[i]} is not a finite float32 number")
            out.cont[rows, j] = np.where(wrong, 0, vals)[ok]
            nonnull |= v
    out.has_feat[rows] |= nonnull[ok]


def repeated_ids(ids: np.ndarray, ok: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """ids (n,), ok (n,) bool, seen (N+1,) bool -> (n,) bool: the valid rows whose id already has a
    row, in an earlier row group (`seen`) or earlier in this one (every repeat after the first)."""
    dup = np.zeros(len(ids), bool)
    dup[ok] = seen[ids[ok]]
    _, first = np.unique(ids, return_index=True)
    again = np.ones(len(ids), bool)
    again[first] = False
    return dup | (ok & again)


def _checked_ids(col, vocab: int, where: Where, fid: str,
                 bad: ds.BadRecords) -> tuple[np.ndarray, np.ndarray]:
    """Feature RIDs -> (values, valid); values outside 0..vocab are bad records, then 0."""
    vals, valid = int_values(col, f"{where.path}: column {fid!r}")
    wrong = (vals < 0) | (vals > vocab)
    report(bad, wrong, lambda i: f"{where(i)}: feature {fid}: value {vals[i]} is not a value "
                                 f"id in 0..{vocab} ({INDEXER} 'f')")
    return np.where(wrong, 0, vals), valid


def _fill_lists(array: np.ndarray, j: int, col, rows: np.ndarray, ok: np.ndarray, vocab: int,
                where: Where, fid: str, bad: ds.BadRecords) -> np.ndarray:
    """Writes list column `fid` into array[:, j]; widens the table when a list is longer."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = list_lengths(col)
    flat_row, pos = ragged_positions(lengths)
    vals, _ = int_values(col.flatten(), f"{where.path}: column {fid!r}")
    wrong = (vals < 0) | (vals > vocab)
    report(bad, wrong, lambda k: f"{where(int(flat_row[k]))}: feature {fid}: value {vals[k]} is "
                                 f"not a value id in 0..{vocab} ({INDEXER} 'f')")
    width = int(lengths[ok].max(initial=0))
    if width > array.shape[2]:
        array = np.pad(array, ((0, 0), (0, 0), (0, width - array.shape[2])))
    keep = ok[flat_row]
    rid = np.zeros(len(ok), np.int64)
    rid[ok] = rows
    array[rid[flat_row[keep]], j, pos[keep]] = np.where(wrong, 0, vals)[keep]
    return array


# --------------------------------------------------------------------------- sequences

class _Buffer:
    """A growable 1-D array: sized from the files' metadata up front, so it rarely grows."""

    def __init__(self, dtype, capacity: int):
        self.a, self.n = np.empty(max(capacity, 1), dtype), 0

    def claim(self, k: int) -> np.ndarray:
        """The next k slots, to be written by the caller."""
        if self.n + k > len(self.a):
            grown = np.empty(max(2 * len(self.a), self.n + k), self.a.dtype)
            grown[:self.n] = self.a[:self.n]
            self.a = grown
        self.n += k
        return self.a[self.n - k:self.n]

    def view(self) -> np.ndarray:
        return self.a[:self.n]


def event_upper_bound(files: list[Path]) -> int:
    """Events + rows over all seq parts, from the footers alone (no data read): the item_id
    leaf's value count includes nulls and empty lists, so it bounds the events from above."""
    total = 0
    for path in files:
        md = open_parquet(path).metadata
        total += md.num_rows
        leaf = [i for i in range(md.num_columns)
                if md.schema.column(i).path.split(".")[0] == "seq"
                and md.schema.column(i).name == "item_id"]
        for g in range(md.num_row_groups):
            total += md.row_group(g).column(leaf[0]).num_values if leaf else 0
    return total


def check_seq_schema(path: Path, schema: pa.Schema) -> None:
    if "user_id" not in schema.names or "seq" not in schema.names:
        raise ds.DataError(f"{path}: expected columns 'user_id' and 'seq', got {schema.names[:20]}")
    if value_kind(schema.field("user_id").type) != "int":
        raise ds.DataError(f"{path}: column 'user_id' has type {schema.field('user_id').type}; "
                           "expected integers")
    t = schema.field("seq").type
    ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type)
    fields = {f.name: f.type for f in t.value_type} if ok else {}
    if not ok or value_kind(fields.get("item_id", pa.string())) != "int" or \
            value_kind(fields.get("action_type", pa.null())) not in ("int", "null"):
        raise ds.DataError(f"{path}: column 'seq' has type {t}; expected list<struct<item_id: "
                           "int, action_type: int, timestamp: int>>")


def seq_columns(pf: pq.ParquetFile) -> list[str]:
    """user_id and only the seq leaves the parse needs (item_id, action_type): the timestamps
    are never decoded (a third of the bytes)."""
    md = pf.metadata.schema
    leaves = [md.column(i).path for i in range(len(md))
              if md.column(i).path.split(".")[0] == "seq"
              and md.column(i).name in ("item_id", "action_type")]
    return ["user_id"] + (leaves or ["seq"])


@dataclass
class _Lines:
    """The sequence arrays being built; tokens in buffers, per-line arrays in chunks."""
    tok_id: _Buffer
    tok_action: _Buffer
    lens: list
    users: list
    profile: list
    stats: dict


def read_sequences(files: list[Path], itemnum: int, usernum: int, item_usable: np.ndarray,
                   user_profile: np.ndarray, bad: ds.BadRecords,
                   keep_empty: bool = False) -> tuple[ds.SequenceData, dict]:
    """seq/ -> SequenceData (lines in file order: profile token if the user has one, then the
    kept events oldest first) and counts. item_usable (I+1,) / user_profile (U+1,) bool.
    keep_empty: keep users without a usable item as lines too (inference answers every user)."""
    cap = event_upper_bound(files)
    lines = _Lines(_Buffer(np.int32, cap), _Buffer(np.int8, cap), [], [], [],
                   {"lines_without_items": 0, "events_without_item": 0, "null_action_types": 0,
                    "events_of_featureless_items": 0})
    seen = np.zeros(usernum + 1, bool)
    n_groups = sum(open_parquet(p).num_row_groups for p in files)
    with tqdm(total=n_groups, desc="seq row groups", disable=None, leave=False) as bar:
        for path in files:
            pf = open_parquet(path)
            check_seq_schema(path, pf.schema_arrow)
            columns = seq_columns(pf)
            first = 0
            for g in range(pf.num_row_groups):
                t = read_row_group(pf, path, g, columns)
                _add_row_group(t, Where(path, g, first), itemnum, usernum, item_usable,
                               user_profile, seen, lines, bad, keep_empty)
                first += t.num_rows
                bar.update(1)
    lens = np.concatenate(lines.lens) if lines.lens else np.zeros(0, np.int64)
    seqs = ds.SequenceData(
        tok_id=lines.tok_id.view(), tok_action=lines.tok_action.view(),
        tok_type=np.full(lines.tok_id.n, ds.TOKEN_ITEM, np.int8),
        line_offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        line_user=(np.concatenate(lines.users) if lines.users else np.zeros(0)).astype(np.int32),
        has_profile=np.concatenate(lines.profile) if lines.profile else np.zeros(0, bool))
    seqs.tok_type[seqs.line_offsets[:-1][seqs.has_profile]] = ds.TOKEN_PROFILE
    return seqs, lines.stats


def _events(col, where: Where) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seq column of a row group -> (lengths (n,), item_id (E,) with null/0 -> 0,
    action (E,) int8 with null -> ACTION_NULL). A null event is an event without an item."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = list_lengths(col)
    flat = col.flatten()  # honours null lists and slicing
    children = dict(zip([f.name for f in flat.type], flat.flatten()))  # parent nulls merged
    items, _ = int_values(children["item_id"], f"{where.path}: column 'seq' item_id")
    if "action_type" in children:
        act, valid = int_values(children["action_type"], f"{where.path}: column 'seq' action_type")
        action = np.where(valid, np.clip(act, -127, 127), ds.ACTION_NULL).astype(np.int8)
    else:
        action = np.full(len(items), ds.ACTION_NULL, np.int8)
    return lengths, items, action


def _add_row_group(t: pa.Table, where: Where, itemnum: int, usernum: int,
                   item_usable: np.ndarray, user_profile: np.ndarray, seen: np.ndarray,
                   lines: _Lines, bad: ds.BadRecords, keep_empty: bool = False) -> None:
    users, valid = int_values(t.column("user_id"), f"{where.path}: column 'user_id'")
    row_ok = valid & (users >= 1) & (users <= usernum)
    report(bad, ~row_ok, lambda i: f"{where(i)}: user_id {users[i] if valid[i] else None} is "
                                   f"not a user RID in 1..{usernum} ({INDEXER} 'u')")
    dup = repeated_ids(users, row_ok, seen)
    report(bad, dup, lambda i: f"{where(i)}: user_id {users[i]} has a seq row already")
    row_ok &= ~dup
    seen[users[row_ok]] = True
    lengths, items, action = _events(t.column("seq"), where)
    ev_row = np.repeat(np.arange(len(users)), lengths)
    wrong = (items < 0) | (items > itemnum)
    report(bad, wrong, lambda k: f"{where(int(ev_row[k]))} (user_id {users[ev_row[k]]}): "
                                 f"item_id {items[k]} is not an item RID in 1..{itemnum} "
                                 f"({INDEXER} 'i')")
    present = row_ok[ev_row] & ~wrong & (items > 0)
    keep = present & item_usable[np.where(present, items, 0)]
    st = lines.stats
    st["events_without_item"] += int((row_ok[ev_row] & (items == 0)).sum())
    st["events_of_featureless_items"] += int((present & ~keep).sum())
    st["null_action_types"] += int((keep & (action == ds.ACTION_NULL)).sum())
    _append_lines(users, row_ok, ev_row, items, action, keep, user_profile, lines, keep_empty)


def _append_lines(users, row_ok, ev_row, items, action, keep, user_profile, lines: _Lines,
                  keep_empty: bool) -> None:
    """Lines of this row group -> the buffers: [user if profile] + kept items, per row."""
    counts = np.bincount(ev_row[keep], minlength=len(users))
    line = row_ok & ((counts > 0) | keep_empty)
    lines.stats["lines_without_items"] += int((row_ok & (counts == 0)).sum())
    prof = line & user_profile[np.where(row_ok, users, 0)]
    lens = np.where(line, counts + prof, 0)
    start = np.cumsum(lens) - lens  # of each row's tokens within this group's slice
    tok_id, tok_action = lines.tok_id.claim(int(lens.sum())), lines.tok_action.claim(int(lens.sum()))
    tok_id[start[prof]], tok_action[start[prof]] = users[prof], 0
    kept_row = ev_row[keep]
    rank = np.arange(len(kept_row)) - np.repeat(np.cumsum(counts) - counts, counts)
    dest = start[kept_row] + prof[kept_row] + rank
    tok_id[dest], tok_action[dest] = items[keep], action[keep]
    lines.lens.append(lens[line])
    lines.users.append(users[line])
    lines.profile.append(prof[line])


# --------------------------------------------------------------------------- the parse

def item_oid_to_rid(indexer_i: dict) -> dict[int, int]:
    """indexer['i'] with every OID as an int: the pickle keys are ints, mm_emb's anonymous_cid
    and some copies use decimal strings (§2 of the spec); one type avoids the silent misses."""
    out = {}
    for oid, rid in indexer_i.items():
        if isinstance(oid, str) and oid.strip().lstrip("-").isdigit():
            oid = int(oid)
        if isinstance(oid, int | np.integer) and not isinstance(oid, bool):
            out[int(oid)] = int(rid)
    return out


def multimodal_tables(data_dir: Path, mm_emb_ids: list[str], indexer: dict, itemnum: int,
                      on_bad_record: str, mm_dir: Path | None) -> tuple[dict, dict]:
    """-> (mm_dims, {fid: (I+1, dim) float16 memmap}) from mm_emb/emb_<fid>_<dim>_parquet/,
    converted by the shared streaming conversion (layouts/mm.py) with every OID as an int."""
    if not mm_emb_ids:
        return {}, {}
    dims = {fid: ds.mm_dim(ds.find_mm_source(data_dir, fid)) for fid in mm_emb_ids}
    tables = ds.convert_mm_tables(data_dir, mm_emb_ids, item_oid_to_rid(indexer["i"]), itemnum,
                                  mm_dir, on_bad_record)
    return dims, tables


def parse_v2(data_dir: Path, mm_emb_ids: list[str], on_bad_record: str,
             mm_dir: Path | None = None) -> ds.Dataset:
    """Parse a V2 directory into a Dataset (see the module docstring)."""
    data_dir = Path(data_dir)
    bad = ds.BadRecords(on_bad_record)
    files = {name: part_files(data_dir, name) for name in FOLDERS}
    require_folders(data_dir, files)
    indexer = ds.load_pickle_checked(data_dir / INDEXER)
    ds.check_indexer(indexer, data_dir / INDEXER)
    itemnum, usernum = len(indexer["i"]), len(indexer["u"])
    schema = discover_schema(data_dir, files, indexer["f"])
    items = read_features(files["item_feat"], "item", itemnum, schema, bad)
    users = read_features(files["user_feat"], "user", usernum, schema, bad)
    has_item_features = bool(schema.item_sparse or schema.item_array or schema.item_continual)
    # As the baseline (and V1's schema.json rule): with no item features at all, items count
    # by their id alone; otherwise an item needs a non-null feature to be a token.
    usable = items.has_feat if has_item_features else np.arange(itemnum + 1) > 0
    seqs, stats = read_sequences(files["seq"], itemnum, usernum, usable, users.has_feat, bad)
    unused = np.ones(usernum + 1, bool)  # users without a line: their rows stay zero, as V1
    unused[seqs.line_user] = False
    for table in (users.sparse, users.array, users.cont):
        table[unused] = 0
    schema.mm_dims, mm = multimodal_tables(data_dir, mm_emb_ids, indexer, itemnum,
                                           on_bad_record, mm_dir)
    tables = ds.FeatureTables(items.sparse, items.array, items.cont,
                              users.sparse, users.array, users.cont, mm=mm)
    stats.update(bad_records_skipped=bad.count, layout="v2",
                 items_without_feature_row=int(itemnum - items.has_row[1:].sum()),
                 users_without_feature_row=int(usernum - users.has_row[1:].sum()))
    if seqs.num_lines == 0:
        raise ds.DataError(f"{data_dir / 'seq'}: no user has any item: the dataset is empty")
    log.info("parsed %s (V2): %d users with items, %d items, %d tokens, %d lines skipped (no "
             "items), %d null action types, %d bad records skipped", data_dir, seqs.num_lines,
             itemnum, len(seqs.tok_id), stats["lines_without_items"], stats["null_action_types"],
             bad.count)
    return ds.Dataset(schema, seqs, tables, itemnum, usernum, items.has_row, stats)
