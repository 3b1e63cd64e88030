"""Read a competition inference directory (../shared/docs/data-format.md, "Inference directory")
into the tables the model gathers from.

The directory holds the training `indexer.pkl`, `item_feat_dict.json` and `creative_emb/`, plus
`predict_seq.jsonl` + `predict_seq_offsets.pkl` (the users to recommend for, V1 record layout) and
`predict_set.jsonl` (the candidates: `{"creative_id", "retrieval_id", "features"}` per line).

Rows of the item tables (`InferenceData.tables.item_*`, `mm`):
    0                   padding
    1..itemnum          the indexer's items, features from item_feat_dict.json (as training)
    then                one row per distinct cold item of predict_seq (an id above itemnum, or
                        not an item reid at all): features from its first record
    then                one row per candidate of predict_set: features from its `features`
Rows of the user tables: 0 padding, row r = line r - 1 of predict_seq (profile record features).
`item_emb_id` / `user_emb_id` map each row to its row of the model's id embeddings: training
items to themselves, cold items and cold users to 0, candidates to `indexer['i'][creative_id]`
(0 when unseen), users to their reid when the line names a known user.

Cold feature values (strings, ids outside the vocabulary) become 0, never an error: they are
expected at inference. Malformed records follow `on_bad_record`, as in training.
Multimodal vectors are looked up by RAW creative id: a candidate's `creative_id`, and for a cold
item of predict_seq its id itself (the platform keeps the creative id of items unseen in training,
which is why those ids exceed itemnum); items without a vector get zeros.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from layouts.data_rules import show
import dataset  # discover_schema, mm_dim: the parse training does
from dataset import (TOKEN_ITEM, TOKEN_PROFILE, BadRecords, DataError, FeatureSchema,
                     FeatureTables, SequenceData, fill_feature_tables, find_mm_source,
                     json_loads, load_pickle_checked, resolve_mm_ids)
from layouts import v1  # load_item_feat_dict, decode_records: the V1 parse training does

log = logging.getLogger(__name__)

REQUIRED_FILES = ("indexer.pkl", "item_feat_dict.json", "predict_seq.jsonl",
                  "predict_seq_offsets.pkl", "predict_set.jsonl")


@dataclass
class InferenceData:
    """Everything inference needs; arrays are numpy, rows as in the module docstring."""
    schema: FeatureSchema
    seqs: SequenceData        # one line per predict_seq line; tok_id = item ROW / user ROW,
                              # line_user = the line's user row (line index + 1)
    tables: FeatureTables     # item tables (R_i, ...), user tables (R_u, ...), mm (R_i, dim)
    item_emb_id: np.ndarray   # (R_i,) int64 id-embedding row of each item row
    user_emb_id: np.ndarray   # (R_u,) int64 id-embedding row of each user row
    itemnum: int              # training items (rows of the model's item id embedding - 1)
    usernum: int              # training users
    users: list               # raw user id of each line, in line order (the output's "users")
    cand_rows: np.ndarray         # (N,) int64 item row of each candidate
    cand_creative_ids: np.ndarray  # (N,) int64
    cand_retrieval_ids: np.ndarray  # (N,) uint64
    stats: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.users)

    def emb_id_tables(self) -> dict[str, np.ndarray]:
        return {"item_emb_id": self.item_emb_id, "user_emb_id": self.user_emb_id}


class _ColdValues(BadRecords):
    """Counts cold feature values (unseen strings, ids outside the vocabulary) without logging
    each: they are normal at inference. fill_feature_tables maps each one to 0."""

    def __init__(self):
        super().__init__("skip")

    def __call__(self, message: str) -> None:
        self.count += 1


@dataclass
class _Line:
    user: object               # the user id as written: a reid (int) or a raw id (str)
    profile: dict | None
    items: list                # [(item id as written, features)]


# --------------------------------------------------------------------------- entry point

def load_inference_dir(data_dir: str | Path, schema: FeatureSchema | None = None,
                       itemnum: int | None = None, usernum: int | None = None,
                       mm_emb_ids: list[str] | None = None,
                       on_bad_record: str = "error") -> InferenceData:
    """Read `data_dir`. `schema`, `itemnum`, `usernum`: the TRAINING ones (from the checkpoint);
    when `schema` is None it is rediscovered from this directory as dataset.py does (same
    indexer), with multimodal features `mm_emb_ids` (None: 81 when present).
    Raises DataError for missing files, malformed data (per on_bad_record) or an indexer that
    does not match itemnum/usernum."""
    data_dir = Path(data_dir)
    for name in REQUIRED_FILES:
        if not (data_dir / name).is_file():
            raise DataError(f"{data_dir / name}: missing (an inference directory needs "
                            f"{', '.join(REQUIRED_FILES)})")
    bad, cold_values = BadRecords(on_bad_record), _ColdValues()
    indexer = _load_indexer(data_dir, itemnum, usernum)
    itemnum, usernum = len(indexer["i"]), len(indexer["u"])
    # the same reader as training, so the training items get exactly the training features
    item_feats = v1.load_item_feat_dict(data_dir / "item_feat_dict.json", itemnum, bad)
    lines = _parse_predict_seq(data_dir, bad)
    candidates = _parse_predict_set(data_dir / "predict_set.jsonl", bad)

    seqs, cold_items, profiles = _sequences(lines, itemnum, item_feats)
    if schema is None:
        schema = _discover_schema(data_dir, indexer, profiles, item_feats, mm_emb_ids)
    else:
        _check_vocab(schema, indexer, data_dir)
    sparse, array, cont, mm, item_emb_id, cand_rows = _item_tables(
        data_dir, schema, indexer["i"], item_feats, cold_items, candidates, cold_values, bad)
    tables = FeatureTables(sparse, array, cont,
                           *fill_feature_tables(profiles, seqs.num_lines, schema, "user",
                                                cold_values, "predict_seq.jsonl (user profile)",
                                                bad_numbers=bad),
                           mm=mm)
    users, user_emb_id = _users(lines, indexer["u"], usernum)
    stats = {"lines": len(lines), "cold_users": int((user_emb_id[1:] == 0).sum()),
             "cold_items_in_sequences": len(cold_items), "candidates": len(candidates),
             "cold_candidates": int((item_emb_id[cand_rows] == 0).sum()),
             "cold_feature_values": cold_values.count, "bad_records_skipped": bad.count}
    log.info("read %s: %d users (%d cold), %d candidates (%d cold), %d cold items in sequences, "
             "%d cold feature values -> 0, %d bad records skipped", data_dir, stats["lines"],
             stats["cold_users"], stats["candidates"], stats["cold_candidates"],
             stats["cold_items_in_sequences"], cold_values.count, bad.count)
    return InferenceData(schema, seqs, tables, item_emb_id, user_emb_id, itemnum, usernum, users,
                         cand_rows, np.asarray([c[0] for c in candidates], np.int64),
                         np.asarray([c[1] for c in candidates], np.uint64), stats)


def _item_tables(data_dir: Path, schema: FeatureSchema, item_indexer: dict,
                 item_feats: dict[int, dict], cold_items: dict, candidates: list,
                 cold_values: BadRecords, bad: BadRecords):
    """-> (sparse, array, continual, mm, item_emb_id, candidate rows) over all item rows:
    training items, then cold items of the sequences, then candidates."""
    itemnum = len(item_indexer)
    n_cold, n_cand = len(cold_items), len(candidates)
    n_rows = itemnum + n_cold + n_cand  # item rows without the padding row
    cand_rows = np.arange(itemnum + n_cold + 1, n_rows + 1, dtype=np.int64)
    feats = dict(item_feats)
    feats.update({itemnum + 1 + k: f for k, f in enumerate(cold_items.values())})
    feats.update({int(r): c[2] for r, c in zip(cand_rows, candidates)})
    sparse, array, cont = fill_feature_tables(feats, n_rows, schema, "item", cold_values,
                                              "inference items", bad_numbers=bad)
    mm = _mm_tables(data_dir, schema, item_indexer, itemnum,
                    list(cold_items) + [c[0] for c in candidates])
    item_emb_id = np.zeros(n_rows + 1, np.int64)
    item_emb_id[:itemnum + 1] = np.arange(itemnum + 1)  # cold rows stay 0
    item_emb_id[cand_rows] = [_known_item(item_indexer, c[0], itemnum) for c in candidates]
    return sparse, array, cont, mm, item_emb_id, cand_rows


# --------------------------------------------------------------------------- the files

def _load_indexer(data_dir: Path, itemnum: int | None, usernum: int | None) -> dict:
    path = data_dir / "indexer.pkl"
    indexer = load_pickle_checked(path)
    if not isinstance(indexer, dict) or not {"u", "i", "f"} <= indexer.keys():
        raise DataError(f"{path}: expected a dict with keys 'u', 'i', 'f'")
    for key, n, what in (("i", itemnum, "items"), ("u", usernum, "users")):
        if n is not None and len(indexer[key]) != n:
            raise DataError(f"{path}: holds {len(indexer[key])} {what} but the model was trained "
                            f"with {n}: this is not the training indexer of the checkpoint")
    return indexer


def _parse_predict_seq(data_dir: Path, bad: BadRecords) -> list[_Line]:
    path, offsets_path = data_dir / "predict_seq.jsonl", data_dir / "predict_seq_offsets.pkl"
    offsets = load_pickle_checked(offsets_path)
    if not isinstance(offsets, list | tuple | np.ndarray):
        raise DataError(f"{offsets_path}: expected a list of byte offsets")
    lines, position, lineno = [], 0, 0
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc="parse predict_seq.jsonl", disable=None,
                                     leave=False) as bar:
        for lineno, raw in enumerate(f, 1):
            k = lineno - 1
            if k >= len(offsets) or int(offsets[k]) != position:
                raise DataError(f"{offsets_path}: entry {k} is "
                                f"{offsets[k] if k < len(offsets) else 'nothing'} but line "
                                f"{lineno} of {path.name} starts at byte {position}")
            position += len(raw)
            bar.update(len(raw))
            line = _parse_line(raw, f"{path}:{lineno}", bad)
            if line is not None:
                lines.append(line)
    if len(offsets) != lineno:
        raise DataError(f"{offsets_path}: holds {len(offsets)} offsets but {path} has "
                        f"{lineno} lines")
    if not lines:  # an empty result with exit 0 would look like success
        raise DataError(f"{path}: no users to recommend for ({lineno} lines"
                        f"{', all skipped as bad records' if lineno else ''})")
    return lines


def _parse_line(raw: bytes, where: str, bad: BadRecords) -> _Line | None:
    """One line -> _Line, with the baseline's acceptance: a profile needs a user id and a
    feature dict, an item a (possibly cold) id and a feature dict. None: the line is skipped."""
    records = v1.decode_records(raw, where, bad)
    if records is None:
        return None
    line = _Line(None, None, [])
    for n, rec in enumerate(records):
        if not isinstance(rec, list) or len(rec) != 6:
            bad(f"{where}: record {n}: expected [user_id, item_id, user_feature, item_feature, "
                f"action_type, timestamp], got {show(rec)}")
            continue
        u, i, u_feat, i_feat, _action, _ts = rec
        if not _is_id(u) or not _is_id(i):
            bad(f"{where}: record {n}: user id {show(u)} / item id {show(i)}: expected an integer, "
                "a string or null")
            continue
        if u and line.user is None:
            line.user = u
        if u and u_feat:
            if not isinstance(u_feat, dict):
                bad(f"{where}: record {n}: user_feature must be an object")
                continue
            line.profile = u_feat
        if i and i_feat:
            if not isinstance(i_feat, dict):
                bad(f"{where}: record {n}: item_feature must be an object")
                continue
            line.items.append((i, i_feat))
    if line.user is None:
        bad(f"{where}: no record names the user id (the output needs one per line)")
        return None
    return line


def _is_id(x) -> bool:
    return x is None or isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool))


def _parse_predict_set(path: Path, bad: BadRecords) -> list[tuple[int, int, dict]]:
    """-> [(creative_id, retrieval_id, features)], the first line of a repeated creative id."""
    out, seen, repeats, line_of_rid = [], set(), 0, {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(tqdm(f, desc="parse predict_set.jsonl", disable=None,
                                          leave=False), 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json_loads(raw)
                cid, rid, feats = obj["creative_id"], obj["retrieval_id"], obj.get("features")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                bad(f"{where}: expected {{\"creative_id\": int, \"retrieval_id\": int, "
                    f"\"features\": {{...}}}} ({type(e).__name__}: {e})")
                continue
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                       for x in (cid, rid)) or not isinstance(feats, dict | None):
                bad(f"{where}: creative_id and retrieval_id must be non-negative integers and "
                    f"features an object, got {show(cid)}, {show(rid)}, {type(feats).__name__}")
                continue
            if cid in seen:  # the output lists distinct creative ids
                repeats += 1
                continue
            if rid in line_of_rid:  # retrieval id -> creative id must be a function
                bad(f"{where}: retrieval_id {rid} was already given on line {line_of_rid[rid]} "
                    "to another creative_id; retrieval ids must be distinct")
                continue
            seen.add(cid)
            line_of_rid[rid] = lineno
            out.append((cid, rid, feats or {}))
    if repeats:
        log.warning("%s: %d lines repeat an earlier creative_id; kept the first of each",
                    path, repeats)
    if not out:
        raise DataError(f"{path}: no candidates")
    return out


# --------------------------------------------------------------------------- rows

def _sequences(lines: list[_Line], itemnum: int, item_feats: dict[int, dict]):
    """-> (SequenceData over item/user ROWS, {cold item id: features} in row order,
    {user row: profile features}). Adds record features of items that item_feat_dict lacks
    to `item_feats`, as training does."""
    cold: dict = {}       # cold item id -> its features (first record), in row order
    cold_row: dict = {}   # cold item id -> its row
    tok_id, tok_type, lens, has_profile, profiles = [], [], [], [], {}
    for n, line in enumerate(lines):
        row_u = n + 1
        has = line.profile is not None
        if has:
            profiles[row_u] = line.profile
        rows = []
        for i, feats in line.items:
            if _is_reid(i, itemnum):
                item_feats.setdefault(i, feats)
                rows.append(i)
            else:
                if i not in cold:
                    cold[i], cold_row[i] = feats, itemnum + 1 + len(cold)
                rows.append(cold_row[i])
        tok_id += [row_u] * has + rows
        tok_type += [TOKEN_PROFILE] * has + [TOKEN_ITEM] * len(rows)
        lens.append(has + len(rows))
        has_profile.append(has)
    seqs = SequenceData(
        tok_id=np.asarray(tok_id, dtype=np.int64),
        tok_type=np.asarray(tok_type, dtype=np.int8),
        tok_action=np.zeros(len(tok_id), dtype=np.int16),  # unused by the query
        line_offsets=np.concatenate([[0], np.cumsum(lens, dtype=np.int64)]).astype(np.int64),
        line_user=np.arange(1, len(lines) + 1, dtype=np.int64),
        has_profile=np.asarray(has_profile, dtype=bool),
    )
    return seqs, cold, profiles


def _is_reid(x, n: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= n


def _known_item(item_indexer: dict, cid: int, itemnum: int) -> int:
    """The item reid of a raw creative id, 0 when training never saw it."""
    reid = _raw_lookup(item_indexer, cid)
    return reid if _is_reid(reid, itemnum) else 0


def _raw_lookup(mapping: dict, raw):
    """Raw ids are ints in some files and strings in others: try both spellings."""
    r = mapping.get(raw)
    if r is None and not isinstance(raw, str):
        r = mapping.get(str(raw))
    elif r is None and raw.isdigit():
        r = mapping.get(int(raw))
    return r


def _users(lines: list[_Line], user_indexer: dict, usernum: int) -> tuple[list, np.ndarray]:
    """-> (raw user id per line, (lines + 1,) user_emb_id). A known user is written as its reid;
    the output names it by its raw id. An unseen user keeps its raw (string) id and embeds as 0."""
    wanted = {ln.user for ln in lines if _is_reid(ln.user, usernum)}
    raw_of = {reid: raw for raw, reid in user_indexer.items() if reid in wanted}
    users, emb = [], np.zeros(len(lines) + 1, np.int64)
    for n, ln in enumerate(lines, 1):
        if _is_reid(ln.user, usernum):
            users.append(raw_of.get(ln.user, ln.user))
            emb[n] = ln.user
        else:
            users.append(ln.user)
            known = _raw_lookup(user_indexer, ln.user) if isinstance(ln.user, str) else None
            emb[n] = known if _is_reid(known, usernum) else 0
    return users, emb


# --------------------------------------------------------------------------- schema and vectors

def _discover_schema(data_dir: Path, indexer: dict, profiles: dict, item_feats: dict,
                     mm_emb_ids: list[str] | None) -> FeatureSchema:
    """The training schema rebuilt as dataset.py discovers it: schema.json when present, else
    groups from the features seen (the indexer, hence the vocabularies, is the training one)."""
    log.warning("no training schema given (an older checkpoint?): rediscovering it from %s",
                data_dir)
    schema = dataset.discover_schema(data_dir, indexer["f"], profiles, item_feats)
    schema.mm_dims = {fid: dataset.mm_dim(find_mm_source(data_dir, fid))
                      for fid in resolve_mm_ids(data_dir, mm_emb_ids)}
    return schema


def _check_vocab(schema: FeatureSchema, indexer: dict, data_dir: Path) -> None:
    """The model's vocabularies come from the checkpoint; warn when this indexer disagrees
    (values outside the checkpoint's vocabulary then map to 0)."""
    differ = [fid for fid, n in schema.vocab.items() if len(indexer["f"].get(fid, {})) != n]
    if differ:
        log.warning("%s: vocabulary sizes of features %s differ from the checkpoint's",
                    data_dir / "indexer.pkl", differ[:10])


def _mm_tables(data_dir: Path, schema: FeatureSchema, item_indexer: dict, itemnum: int,
               extra_cids: list) -> dict[str, np.ndarray]:
    """fid -> (rows, dim) float16 read-only memmap of an unlinked temporary file, as training's
    tables (a 1024-d table of millions of rows stays in the page cache, not in memory). Rows
    1..itemnum by the indexer, extra rows (cold items, then candidates) by their raw creative
    ids; a creative on several rows is read once, copied."""
    lookup = _RowLookup(item_indexer)
    dst, src = [], []
    for row, cid in enumerate(extra_cids, itemnum + 1):
        first = lookup.get(cid)
        if first is None:
            lookup.extra[cid] = row
        else:
            dst.append(row)
            src.append(first)
    for fid, dim in schema.mm_dims.items():
        source = find_mm_source(data_dir, fid)
        if source is None:
            raise DataError(f"{data_dir / 'creative_emb'}: no emb_{fid}_<dim>.pkl or "
                            f"emb_{fid}_<dim>/, but the model uses multimodal feature {fid}")
        if dataset.mm_dim(source) != dim:
            raise DataError(f"{source}: dimension {dataset.mm_dim(source)}, but the model was "
                            f"trained with {dim} for feature {fid}")
    copies = (np.asarray(dst, np.int64), np.asarray(src, np.int64))
    return dataset.convert_mm_tables(data_dir, list(schema.mm_dims), lookup,
                                     itemnum + len(extra_cids), None, "error", copies)


class _RowLookup:
    """raw creative id -> table row: the indexer's reid, else a row given to an extra creative.
    Has the `.get` that the multimodal conversion calls."""

    def __init__(self, item_indexer: dict):
        self.item_indexer, self.extra = item_indexer, {}

    def get(self, cid):
        row = _raw_lookup(self.item_indexer, cid)
        return self.extra.get(cid) if row is None else row

