"""Writer of the TAAC 2025 "V1" data layout (see docs/data-format.md).

This module only WRITES data directories; `layouts/v1.py` reads them. Two entry points:

- `write_v1_dataset`: a training directory (seq.jsonl, seq_offsets.pkl, indexer.pkl,
  item_feat_dict.json, creative_emb/, schema.json) from raw ids and raw feature values;
- `write_inference_dir`: a competition-style inference directory (predict_seq.jsonl,
  predict_seq_offsets.pkl, predict_set.jsonl) whose ids go through a TRAINING indexer.

Raw values go in, reids (integers from 1, first-seen order) come out, exactly like the
platform's files. Every directory is built in a temporary sibling folder and renamed into
place at the end, so a crash never leaves a half-written dataset behind.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from layouts import safe_pickle
USER_KINDS = ("user_sparse", "user_array", "user_continual")
ITEM_KINDS = ("item_sparse", "item_array", "item_continual")
FEATURE_KINDS = USER_KINDS + ITEM_KINDS
MM_FORMATS = ("pkl", "jsonl")
PROFILE_POSITIONS = ("last", "first")

# Protocol 4 is readable by every Python 3 that could meet these files.
PICKLE_PROTOCOL = 4

RawId = str | int
Event = tuple[RawId, int | None, int]  # (raw item id, action type or None, unix timestamp)


@dataclass
class UserHistory:
    """One user's raw data: what becomes one line of seq.jsonl.

    features: raw user feature values by feature id ("104" -> "M", "106" -> [3, 7],
        "107" -> 0.5); None writes no profile record at all.
    events: (raw item id, action type or None, timestamp), oldest first.
    profile_position: "last" (as in the real data) or "first".
    """

    raw_user_id: RawId
    features: dict[str, object] | None
    events: list[Event]
    profile_position: str = "last"


def write_v1_dataset(
    out_dir: str | os.PathLike,
    users: Iterable[UserHistory],
    item_features: Mapping[RawId, Mapping[str, object]],
    feature_kinds: Mapping[str, str],
    mm_embeddings: Mapping[str, Mapping[RawId, np.ndarray]] | None = None,
    mm_format: str = "pkl",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a V1 training directory at `out_dir` and return a summary of counts.

    Item reids follow the iteration order of `item_features` (the catalogue: every item in it is
    written to item_feat_dict.json, even without interactions); an event item missing from it gets
    the next reid when first seen, with no features. User reids follow the order of `users`.
    Feature values get reids per feature id in first-seen order: item features first (catalogue
    order), then user features (user order). A feature value of None, or an empty list, is left out.
    """
    kinds = _check_kinds(feature_kinds)
    if mm_format not in MM_FORMATS:
        raise ValueError(f"mm_format must be one of {MM_FORMATS}, got {mm_format!r}")
    indexer: dict[str, Any] = {"u": {}, "i": {}, "f": collections.defaultdict(dict)}
    item_table: list[dict[str, object]] = []  # item reid - 1 -> mapped feature dict
    ids = _TrainIds(indexer, item_table)
    for raw_item, feats in item_features.items():
        _new_item(indexer, item_table, _plain(raw_item), _map_features(feats, kinds, "item", ids))

    with _atomic_dir(out_dir, overwrite) as tmp:
        counts = _write_sequences(tmp / "seq.jsonl", users, kinds, ids)
        _write_json(tmp / "item_feat_dict.json", {str(r + 1): f for r, f in enumerate(item_table)})
        _write_pickle(tmp / "indexer.pkl", indexer)
        mm_summary = _write_creative_emb(tmp / "creative_emb", mm_embeddings or {}, mm_format)
        _write_json(tmp / "schema.json", _schema(kinds, mm_summary))
    return {
        "out_dir": str(out_dir),
        "num_users": len(indexer["u"]),
        "num_items": len(indexer["i"]),
        **counts,
        "feature_vocab": {fid: len(vals) for fid, vals in indexer["f"].items()},
        # Readers that follow the baseline skip item records whose feature dict is empty.
        "num_items_without_features": sum(not f for f in item_table),
        "mm_embeddings": mm_summary,
    }


def write_inference_dir(
    out_dir: str | os.PathLike,
    train_dir: str | os.PathLike,
    users: Iterable[UserHistory],
    candidates: Iterable[Mapping[str, Any]],
    item_features: Mapping[RawId, Mapping[str, object]] | None = None,
    feature_kinds: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a competition-style inference directory that reuses `train_dir`'s indexer.

    Copies indexer.pkl, item_feat_dict.json, creative_emb/ (and schema.json) from `train_dir`;
    writes predict_seq.jsonl + predict_seq_offsets.pkl for `users` and predict_set.jsonl for
    `candidates` (dicts with creative_id, retrieval_id, features: {fid: raw value}).
    Ids go through the TRAINING indexer: an unseen user keeps its raw id as a string, an unseen
    item gets an id above the training item count, an unseen feature value is written as its raw
    value turned into a string. `item_features` gives raw features of items unseen in training;
    items known to training carry their training feature dicts. `feature_kinds` defaults to the
    groups in `train_dir`/schema.json.
    """
    train_dir = Path(train_dir)
    for name in ("indexer.pkl", "item_feat_dict.json"):
        if not (train_dir / name).is_file():
            raise FileNotFoundError(f"missing {train_dir / name}")
    if feature_kinds is None:
        if not (train_dir / "schema.json").is_file():
            raise FileNotFoundError(f"{train_dir} has no schema.json: pass feature_kinds")
        schema = orjson.loads((train_dir / "schema.json").read_bytes())
        feature_kinds = {fid: kind for kind in FEATURE_KINDS for fid in schema.get(kind, [])}
    kinds = _check_kinds(feature_kinds)
    indexer = safe_pickle.load(train_dir / "indexer.pkl")  # may come from the platform: untrusted
    train_items = orjson.loads((train_dir / "item_feat_dict.json").read_bytes())
    item_table = [train_items.get(str(r), {}) for r in range(1, len(train_items) + 1)]
    ids = _FrozenIds(indexer, item_table, kinds, {_plain(k): v for k, v in (item_features or {}).items()})
    with _atomic_dir(out_dir, overwrite) as tmp:
        for name in ("indexer.pkl", "item_feat_dict.json", "schema.json"):
            if (train_dir / name).is_file():
                shutil.copy2(train_dir / name, tmp / name)
        if (train_dir / "creative_emb").is_dir():
            shutil.copytree(train_dir / "creative_emb", tmp / "creative_emb")
        counts = _write_sequences(tmp / "predict_seq.jsonl", users, kinds, ids)
        num_candidates = cold_candidates = 0
        with open(tmp / "predict_set.jsonl", "wb") as f:
            for cand in candidates:
                feats = _map_features(cand.get("features") or {}, kinds, "item", ids)
                row = {
                    "creative_id": int(cand["creative_id"]),
                    "retrieval_id": int(cand["retrieval_id"]),
                    "features": feats,
                }
                f.write(orjson.dumps(row) + b"\n")
                num_candidates += 1
                cold_candidates += row["creative_id"] not in indexer["i"]
    return {
        "out_dir": str(out_dir),
        **counts,
        "num_candidates": num_candidates,
        "cold_users": ids.cold_users,  # lines whose user is unseen in training
        "cold_items": len(ids.cold_items),  # distinct unseen items in the sequences
        "cold_candidates": cold_candidates,  # candidates whose creative id is unseen in training
    }


# ---------------------------------------------------------------------------------------------
# Sequences


def _write_sequences(
    path: Path, users: Iterable[UserHistory], kinds: Mapping[str, str], ids: _TrainIds | _FrozenIds
) -> dict[str, int]:
    """Write `path` (one JSON array per user) and `<stem>_offsets.pkl` (byte offset of each line)."""
    offsets: list[int] = []
    pos = records = profiles = 0
    with open(path, "wb") as f:
        for user in users:
            line = _user_line(user, kinds, ids) + b"\n"
            offsets.append(pos)
            pos += len(line)
            f.write(line)
            records += len(user.events)
            profiles += user.features is not None
    _write_pickle(path.with_name(f"{path.stem}_offsets.pkl"), offsets)
    return {"num_lines": len(offsets), "num_item_records": records, "num_profile_records": profiles}


def _user_line(user: UserHistory, kinds: Mapping[str, str], ids: _TrainIds | _FrozenIds) -> bytes:
    """One line: [[u, i, null, item_feat, action, ts], ..., [u, null, user_feat, null, null, ts]]."""
    if user.profile_position not in PROFILE_POSITIONS:
        raise ValueError(
            f"profile_position must be one of {PROFILE_POSITIONS}, got {user.profile_position!r}"
        )
    u = ids.user(_plain(user.raw_user_id))
    rows: list[list] = []
    last_ts = -math.inf
    for raw_item, action, ts in user.events:
        ts = int(ts)
        if ts < last_ts:
            raise ValueError(
                f"user {user.raw_user_id!r}: timestamps must be ascending ({ts} after {last_ts})"
            )
        last_ts = ts
        i, feats = ids.item(_plain(raw_item))
        rows.append([u, i, None, feats, None if action is None else int(action), ts])
    if user.features is not None:
        first = user.profile_position == "first"
        ts = (rows[0][5] if first else rows[-1][5]) if rows else 0
        profile = [u, None, _map_features(user.features, kinds, "user", ids), None, None, ts]
        rows.insert(0 if first else len(rows), profile)
    return orjson.dumps(rows)


class _TrainIds:
    """Training: an unseen id or feature value gets the next reid (first-seen order)."""

    def __init__(self, indexer: dict[str, Any], item_table: list[dict[str, object]]):
        self.indexer = indexer
        self.item_table = item_table

    def user(self, raw: RawId) -> int:
        users = self.indexer["u"]
        if raw in users:
            raise ValueError(f"user {raw!r} appears twice: give each user one UserHistory")
        users[raw] = len(users) + 1
        return users[raw]

    def item(self, raw: RawId) -> tuple[int, dict[str, object]]:
        if raw not in self.indexer["i"]:
            _new_item(self.indexer, self.item_table, raw, {})
        reid = self.indexer["i"][raw]
        return reid, self.item_table[reid - 1]

    def values(self, fid: str) -> dict:
        return self.indexer["f"].setdefault(fid, {})


class _FrozenIds:
    """Inference: ids and values map through the training indexer, which never grows."""

    def __init__(
        self, indexer: dict[str, Any], item_table: list, kinds: Mapping[str, str], raw_feats: Mapping
    ):
        self.indexer = indexer
        self.item_table = item_table
        self.kinds = kinds
        self.raw_feats = raw_feats
        self.num_train_items = max(len(indexer["i"]), len(item_table))
        self.cold_items: dict[RawId, tuple[int, dict[str, object]]] = {}
        self.cold_users = 0

    def user(self, raw: RawId) -> RawId:
        if raw in self.indexer["u"]:
            return self.indexer["u"][raw]
        self.cold_users += 1
        return str(raw)

    def item(self, raw: RawId) -> tuple[int, dict[str, object]]:
        reid = self.indexer["i"].get(raw)
        if reid is not None:
            return reid, self.item_table[reid - 1] if reid <= len(self.item_table) else {}
        if raw not in self.cold_items:
            feats = _map_features(self.raw_feats.get(raw, {}), self.kinds, "item", self)
            self.cold_items[raw] = (self.num_train_items + len(self.cold_items) + 1, feats)
        return self.cold_items[raw]

    def values(self, fid: str) -> _ColdValues:
        return _ColdValues(self.indexer["f"].get(fid, {}))


class _ColdValues(dict):
    """A feature's value->reid map that never grows: `_reid` of an unseen value is its raw string."""

    def __init__(self, known: Mapping):
        super().__init__()
        self.known = known

    def setdefault(self, raw, default=None):  # noqa: ARG002 - same call as dict.setdefault in _reid
        return self.known[raw] if raw in self.known else str(raw)


# ---------------------------------------------------------------------------------------------
# Features


def _check_kinds(feature_kinds: Mapping[str, str]) -> dict[str, str]:
    kinds = {str(fid): kind for fid, kind in feature_kinds.items()}
    bad = {fid: kind for fid, kind in kinds.items() if kind not in FEATURE_KINDS}
    if bad:
        raise ValueError(f"unknown feature kinds {bad}; valid kinds: {FEATURE_KINDS}")
    return kinds


def _map_features(
    raw: Mapping[str, object], kinds: Mapping[str, str], owner: str, ids: _TrainIds | _FrozenIds
) -> dict[str, object]:
    """Raw feature values -> written values: reid (sparse), list of reids (array), float (continual).

    `ids.values(fid)` is the value->reid map of one feature: the growing indexer['f'][fid] in
    training, a frozen view (unseen value -> raw string) at inference.
    """
    out: dict[str, object] = {}
    for fid, value in raw.items():
        fid = str(fid)
        kind = kinds.get(fid)
        if kind is None:
            raise ValueError(f"feature {fid!r} has no kind: add it to feature_kinds")
        if not kind.startswith(owner):
            raise ValueError(f"feature {fid!r} is {kind} but was given as a {owner} feature")
        if value is None:
            continue
        if kind.endswith("continual"):
            out[fid] = _float(fid, value)
        elif kind.endswith("array"):
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise ValueError(f"array feature {fid!r} needs a list of values, got {value!r}")
            values = ids.values(fid)
            mapped = [_reid(values, _plain(v)) for v in value]
            if mapped:
                out[fid] = mapped
        else:
            out[fid] = _reid(ids.values(fid), _plain(value))
    return out


def _reid(values: dict, raw: object) -> object:
    # dict.setdefault assigns the next reid to an unseen value; a _ColdValues view does not grow.
    return values.setdefault(raw, len(values) + 1)


def _float(fid: str, value: object) -> float:
    x = float(value)  # JSON writes a Python float with a decimal point (1.0), so readers see a float
    if not math.isfinite(x):
        raise ValueError(f"continual feature {fid!r} must be finite, got {value!r}")
    return x


def _new_item(indexer: dict[str, Any], item_table: list, raw: RawId, feats: dict[str, object]) -> None:
    if raw in indexer["i"]:
        raise ValueError(f"item {raw!r} appears twice in item_features")
    indexer["i"][raw] = len(item_table) + 1
    item_table.append(feats)


def _plain(value: object) -> object:
    """numpy scalars -> Python scalars, so pickles and JSON hold only plain types."""
    return value.item() if isinstance(value, np.generic) else value


def _schema(kinds: Mapping[str, str], mm_summary: Mapping[str, Any]) -> dict[str, list[str]]:
    schema = {kind: [fid for fid, k in kinds.items() if k == kind] for kind in FEATURE_KINDS}
    schema["mm_emb_ids"] = list(mm_summary)
    return schema


# ---------------------------------------------------------------------------------------------
# Multimodal embeddings


def _write_creative_emb(
    folder: Path, mm: Mapping[str, Mapping[RawId, np.ndarray]], mm_format: str
) -> dict[str, Any]:
    """creative_emb/emb_<fid>_<dim>.pkl ({raw cid: float32 vector}) or emb_<fid>_<dim>/ JSON lines."""
    summary: dict[str, Any] = {}
    for fid, vectors in mm.items():
        fid = str(fid)
        table = {_plain(cid): np.asarray(vec, dtype=np.float32).reshape(-1) for cid, vec in vectors.items()}
        dims = {v.shape[0] for v in table.values()}
        if len(dims) > 1:
            raise ValueError(f"multimodal feature {fid}: vectors of different sizes {sorted(dims)}")
        dim = dims.pop() if dims else 0
        folder.mkdir(exist_ok=True)
        name = f"emb_{fid}_{dim}"
        if mm_format == "pkl":
            _write_pickle(folder / f"{name}.pkl", table)
        else:
            _write_emb_jsonl(folder / name, table)
        summary[fid] = {
            "dim": dim,
            "count": len(table),
            "path": f"creative_emb/{name}" + (".pkl" if mm_format == "pkl" else "/"),
        }
    return summary


def _write_emb_jsonl(folder: Path, table: Mapping[RawId, np.ndarray]) -> None:
    # Two files when there are rows enough, one named part-* and one *.json: readers must take both.
    folder.mkdir()
    rows = list(table.items())
    half = (len(rows) + 1) // 2 if len(rows) >= 2 else len(rows)
    for name, chunk in (("part-00000", rows[:half]), ("emb-00001.json", rows[half:])):
        if name == "part-00000" or chunk:
            with open(folder / name, "wb") as f:
                for cid, vec in chunk:
                    # tolist() gives the exact float64 value of each float32, so it round-trips.
                    f.write(orjson.dumps({"anonymous_cid": cid, "emb": vec.tolist()}) + b"\n")


# ---------------------------------------------------------------------------------------------
# Files


@contextmanager
def _atomic_dir(out_dir: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temp dir beside `out_dir`; rename it to `out_dir` only if the block succeeds."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "d")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, obj: object) -> None:
    path.write_bytes(orjson.dumps(obj))


def _write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=PICKLE_PROTOCOL)
