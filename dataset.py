"""Read a data directory (V1: ../shared/docs/data-format.md, V2: data-format-v2.md) once into
compact arrays, and cache it.

The one entry the trainer calls (`load_dataset`); the layouts' readers live in layouts/ (`v1`,
`v2`), and this module holds what they share. What comes out is a `Dataset`:
- `seqs`: every user's tokens as flat integer arrays plus line offsets (the profile token first,
  then the items in time order);
- `tables`: per-item and per-user feature tables (sparse ids, padded array ids, continual values,
  multimodal vectors), indexed by reid, row 0 = padding/missing;
- `schema`: which feature ids form which group, their vocabulary sizes and vector dimensions,
  discovered from the data (or read from a `schema.json` a converter wrote).
The parse is slow Python, so it runs once: its result is stored as .npy files in a cache folder
keyed by the inputs' names, sizes and modification times, and later runs memory-map it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from layouts import safe_pickle
from run_files import tempdirs
from layouts.data_rules import check_feature_id, check_schema_document, finite_float32, show

try:  # orjson parses seq.jsonl several times faster; plain json is the fallback
    import orjson

    json_loads = orjson.loads
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    json_loads = json.loads

log = logging.getLogger(__name__)

CACHE_VERSION = 4  # 3: null action types stored as ACTION_NULL; 4: multimodal tables float16
FEATURE_GROUPS = ("user_sparse", "user_array", "user_continual",
                  "item_sparse", "item_array", "item_continual")
DEFAULT_MM_EMB_ID = "81"  # the competition's 32-d multimodal feature, used when present
BAD_RECORD_POLICIES = ("error", "skip")
TOKEN_ITEM, TOKEN_PROFILE = 1, 2
# A null action type ("unknown", about 1 % of real records) is its own state, never an exposure
# (0); known types are stored as they are, saturating at -127 / 127 so they never meet it.
ACTION_NULL = -128


class DataError(Exception):
    """Input data that does not follow the layout; the message names the file and line or key."""


@dataclass
class FeatureSchema:
    """Feature ids by group; `vocab[fid]` values for sparse/array ids (table rows = vocab + 1)."""
    user_sparse: list[str] = field(default_factory=list)
    user_array: list[str] = field(default_factory=list)
    user_continual: list[str] = field(default_factory=list)
    item_sparse: list[str] = field(default_factory=list)
    item_array: list[str] = field(default_factory=list)
    item_continual: list[str] = field(default_factory=list)
    vocab: dict[str, int] = field(default_factory=dict)
    mm_dims: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSchema":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class SequenceData:
    """All users' token sequences, flat. Line u holds tokens line_offsets[u]:line_offsets[u+1]."""
    tok_id: np.ndarray       # (T,) int32: item reid, or the user reid for a profile token
    tok_type: np.ndarray     # (T,) int8: 1 item, 2 user profile
    tok_action: np.ndarray   # (T,) int8: action type of the record (null -> ACTION_NULL;
    #                          known types saturate at +-127; a profile token has 0)
    line_offsets: np.ndarray  # (U+1,) int64
    line_user: np.ndarray    # (U,) int32 user reid of each line
    has_profile: np.ndarray  # (U,) bool: the line's first token is its profile

    @property
    def num_lines(self) -> int:
        return len(self.line_user)


@dataclass
class FeatureTables:
    """Feature tables by reid; row 0 is all zeros (padding / missing)."""
    item_sparse: np.ndarray      # (I+1, n_item_sparse) int32
    item_array: np.ndarray       # (I+1, n_item_array, A) int32, zero-padded lists
    item_continual: np.ndarray   # (I+1, n_item_continual) float32
    user_sparse: np.ndarray      # (U+1, n_user_sparse) int32
    user_array: np.ndarray       # (U+1, n_user_array, A) int32
    user_continual: np.ndarray   # (U+1, n_user_continual) float32
    mm: dict[str, np.ndarray]    # fid -> (I+1, dim) float32


@dataclass
class Dataset:
    schema: FeatureSchema
    seqs: SequenceData
    tables: FeatureTables
    itemnum: int
    usernum: int
    item_valid: np.ndarray  # (I+1,) bool: the item exists (may be drawn as a negative)
    stats: dict

    def item_counts(self) -> np.ndarray:
        """(I+1,) int64 frequency of each item over all lines' item tokens."""
        items = self.seqs.tok_id[self.seqs.tok_type == TOKEN_ITEM]
        return np.bincount(items, minlength=self.itemnum + 1).astype(np.int64)


# --------------------------------------------------------------------------- entry point

def load_dataset(data_dir: str | Path, cache_dir: str | Path | None = None,
                 mm_emb_ids: list[str] | None = None, on_bad_record: str = "error",
                 use_cache: bool = True) -> Dataset:
    """Load `data_dir` (V1 or V2 layout, detected from its files), from the cache when its
    inputs are unchanged, else parse and cache.

    mm_emb_ids=None means feature 81 when creative_emb/ has it, else none.
    """
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    if layout == "v2":
        from layouts import v2
        files, parse = v2.input_files(data_dir), v2.parse_v2
    else:
        from layouts import v1
        v1.require_files(data_dir)
        files, parse = v1.input_files(data_dir), v1.parse_v1
    mm_emb_ids = resolve_mm_ids(data_dir, mm_emb_ids)
    key = _cache_key(data_dir, mm_emb_ids, on_bad_record, files)
    root = Path(cache_dir) if cache_dir else data_dir / ".cache"
    path = root / f"{layout}-{key}"
    if use_cache and (path / "meta.json").exists():
        log.info("loading cached parse %s", path)
        cached = _read_cache_or_discard(path)
        if cached is not None:
            return cached
    root_existed = root.exists()
    scratch = _mm_scratch(root, path.name) if use_cache and mm_emb_ids else None
    parsed = False
    try:
        dataset = parse(data_dir, mm_emb_ids, on_bad_record, scratch)
        parsed = True
        if use_cache:  # moves the converted multimodal tables into the cache
            _write_cache_atomically(dataset, path, {"data_dir": str(data_dir.resolve()),
                                                    "mm_emb_ids": mm_emb_ids,
                                                    "on_bad_record": on_bad_record})
            if dataset.tables.mm and (path / "meta.json").exists():  # map them at their new name
                dataset.tables.mm = {fid: np.load(path / f"mm_{fid}.npy", mmap_mode="r")
                                     for fid in dataset.tables.mm}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            if not parsed and not root_existed and not any(root.iterdir()):
                root.rmdir()  # a failed parse leaves nothing behind, not even the cache root
    return dataset


def _mm_scratch(root: Path, name: str) -> Path | None:
    """A folder beside the cache where the multimodal tables are converted during the parse, so
    that the cache write can move (not copy) them; None when the cache root is not writable."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        # a .tmp- name: a killed parse's scratch is removed at the next start (tempdirs)
        return tempdirs.make_temp_dir(root, _CACHE_TMP, f"{name}.mm")
    except OSError:
        return None


V1_MARKERS = ("seq.jsonl", "seq_offsets.pkl", "item_feat_dict.json")


def detect_layout(data_dir: Path) -> str:
    """'v2' (a seq/ parquet folder), 'v1' (seq.jsonl or its companions), else DataError naming
    what the directory holds."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory")
    # layouts.v2.is_v2, spelled out here so that V1 runs never import pyarrow
    if (data_dir / "seq").is_dir() or (data_dir / "seq.parquet").is_file():
        return "v2"
    if any((data_dir / n).exists() for n in V1_MARKERS):
        return "v1"
    found = sorted(p.name + "/" * p.is_dir() for p in data_dir.iterdir())
    raise DataError(f"{data_dir}: neither a V1 data directory (seq.jsonl, seq_offsets.pkl, "
                    "indexer.pkl, item_feat_dict.json) nor a V2 one (seq/, item_feat/, user_feat/ "
                    f"parquet folders, indexer.pkl); found: {', '.join(found[:12]) or 'nothing'}")


def resolve_mm_ids(data_dir: Path, mm_emb_ids: list[str] | None) -> list[str]:
    if mm_emb_ids is None:
        return [DEFAULT_MM_EMB_ID] if find_mm_source(data_dir, DEFAULT_MM_EMB_ID) else []
    for fid in mm_emb_ids:
        if find_mm_source(data_dir, fid) is None:
            raise DataError(f"{data_dir / 'creative_emb'}: no emb_{fid}_<dim>.pkl or emb_{fid}_<dim>/ "
                            f"(nor mm_emb/emb_{fid}_<dim>_parquet/) for --mm_emb_id {fid}")
    return list(mm_emb_ids)


def _cache_key(data_dir: Path, mm_emb_ids: list[str], on_bad_record: str,
               files: list[Path]) -> str:
    # The directory itself is part of the key: copies with preserved times (cp -p, rsync -t,
    # tar) have equal names, sizes and times, and must not share a cache entry.
    h = hashlib.sha256(json.dumps([CACHE_VERSION, str(data_dir.resolve()), mm_emb_ids,
                                   on_bad_record]).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(data_dir)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- shared by the parses

class BadRecords:
    """Applies --on_bad_record: raise at once, or count and log what was skipped."""

    def __init__(self, policy: str):
        if policy not in BAD_RECORD_POLICIES:
            raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {policy!r}")
        self.policy, self.count = policy, 0

    def __call__(self, message: str) -> None:
        if self.policy == "error":
            raise DataError(message)
        self.count += 1
        if self.count <= 10:
            log.warning("skipped: %s", message)


def check_indexer(indexer, path: Path) -> None:
    if not isinstance(indexer, dict) or not {"u", "i", "f"} <= indexer.keys():
        raise DataError(f"{path}: expected a dict with keys 'u', 'i', 'f'")
    for key in ("u", "i", "f"):
        if not isinstance(indexer[key], dict):
            raise DataError(f"{path}: key {key!r}: expected a dict, got {type(indexer[key]).__name__}")
    for fid, values in indexer["f"].items():
        if not isinstance(values, dict):
            raise DataError(f"{path}: key 'f'[{fid!r}]: expected a dict of raw value -> id, "
                            f"got {type(values).__name__}")


def load_pickle_checked(path: Path):
    try:
        return safe_pickle.load(path)
    except safe_pickle.UnsafePickleError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def read_schema_json(path: Path) -> dict[str, list[str]] | None:
    """schema.json checked (data_rules.check_schema_document), or None when there is none."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: invalid JSON ({type(e).__name__}: {e})") from None
    return check_schema_document(doc, path)


# --------------------------------------------------------------------------- schema and tables

def discover_schema(data_dir: Path, indexer_f: dict, user_feats: dict, item_feats: dict) -> FeatureSchema:
    """Groups from schema.json when a converter wrote one, else from the data itself: a feature
    the indexer maps is sparse (array when any value is a list), any other is continual."""
    declared = read_schema_json(data_dir / "schema.json")
    if declared is not None:
        schema = FeatureSchema.from_dict(declared)
    else:
        schema = FeatureSchema()
        for side, feats in (("user", user_feats), ("item", item_feats)):
            fids, listy = set(), set()
            for f in feats.values():
                fids.update(f)
                listy.update(k for k, v in f.items() if isinstance(v, list))
            where = data_dir / ("seq.jsonl" if side == "user" else "item_feat_dict.json")
            for fid in sorted(fids, key=_fid_order):
                check_feature_id(fid, f"{where}: {side} features")
                kind = ("array" if fid in listy else "sparse") if fid in indexer_f else "continual"
                getattr(schema, f"{side}_{kind}").append(fid)
    for fid in _categorical_fids(schema):
        # A declared feature that never occurs has no vocabulary: only its padding row.
        schema.vocab[fid] = len(indexer_f.get(fid, ()))
    return schema


def _fid_order(fid: str):
    return (0, int(fid), "") if fid.isdigit() else (1, 0, fid)


def _categorical_fids(schema: FeatureSchema) -> list[str]:
    return schema.user_sparse + schema.user_array + schema.item_sparse + schema.item_array


def fill_feature_tables(feats: dict[int, dict], n: int, schema: FeatureSchema, side: str,
                        bad: BadRecords, source: str | dict[int, str],
                        bad_numbers: BadRecords | None = None):
    """-> (sparse (n+1, S) int32, array (n+1, A_n, W) int32, continual (n+1, C) float32).

    source names where the features came from, for errors: a file, or per id a "file:line".
    bad_numbers: the policy for continual values that are not finite float32 numbers (default
    `bad`; inference counts cold ids through `bad` but must still reject a NaN).
    """
    bad_numbers = bad_numbers or bad
    sparse_ids, array_ids, cont_ids = (getattr(schema, f"{side}_{k}")
                                       for k in ("sparse", "array", "continual"))
    width = max([1] + [len(v) for f in feats.values() for k, v in f.items()
                       if k in array_ids and isinstance(v, list)])
    sparse = np.zeros((n + 1, len(sparse_ids)), np.int32)
    array = np.zeros((n + 1, len(array_ids), width), np.int32)
    cont = np.zeros((n + 1, len(cont_ids)), np.float32)
    cols = {fid: ("s", j) for j, fid in enumerate(sparse_ids)}
    cols.update({fid: ("a", j) for j, fid in enumerate(array_ids)})
    cols.update({fid: ("c", j) for j, fid in enumerate(cont_ids)})
    for reid, f in tqdm(feats.items(), desc=f"{side} features", disable=None, leave=False):
        for fid, value in f.items():
            kind, j = cols.get(fid, (None, 0))
            origin = source.get(reid, "?") if isinstance(source, dict) else source
            where = f"{origin}: {side} {reid}, feature {fid}"
            if kind == "s":
                sparse[reid, j] = _checked_id(value, schema.vocab[fid], where, bad)
            elif kind == "a":
                values = value if isinstance(value, list) else [value]
                ids = [_checked_id(v, schema.vocab[fid], where, bad) for v in values]
                array[reid, j, :len(ids)] = ids
            elif kind == "c":
                cont[reid, j] = _checked_float(value, where, bad_numbers)
    return sparse, array, cont


def _checked_id(value, vocab: int, where: str, bad: BadRecords) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= vocab:
        return value
    bad(f"{where}: expected a value id in 0..{vocab} (indexer.pkl 'f'), got {show(value)}")
    return 0


def _checked_float(value, where: str, bad: BadRecords) -> float:
    """A continual value; None, or a bad value under --on_bad_record skip, is missing (0)."""
    if value is None:
        return 0.0
    x = finite_float32(value)
    if x is not None:
        return x
    if isinstance(value, int | float) and not isinstance(value, bool):
        bad(f"{where}: {show(value)} is not a finite float32 number (|x| <= 3.4e38)")
    else:
        bad(f"{where}: expected a number, got {show(value)}")
    return 0.0


# --------------------------------------------------------------------------- multimodal vectors

# The formats, the streaming conversion and its checks live in layouts/mm.py (imported inside
# the functions: it imports this module's DataError and BadRecords).

def find_mm_source(data_dir: Path, fid: str) -> Path | None:
    """creative_emb/emb_<fid>_<dim>(.pkl) or mm_emb/emb_<fid>_<dim>_parquet; None when absent,
    DataError when both (ambiguous)."""
    from layouts import mm
    source = mm.find_source(Path(data_dir), fid)
    return None if source is None else source.path


def mm_dim(path: Path) -> int:
    from layouts import mm
    return mm.dim_from_name(path)


def convert_mm_tables(data_dir: Path, mm_emb_ids: list[str], item_indexer: dict, itemnum: int,
                      scratch: Path | None, on_bad_record: str,
                      copies: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """fid -> (itemnum+1, dim) float16 read-only memmap, converted in a streaming pass into
    `scratch` (the cache write then moves the files into the cache); None: a temporary file,
    unlinked once mapped (the mapping outlives the name). `copies`: see mm.convert_mm_table."""
    from layouts import mm
    out = {}
    for fid in mm_emb_ids:
        folder = Path(scratch) if scratch is not None else Path(tempfile.mkdtemp(prefix="taac-mm-"))
        path = folder / f"mm_{fid}.npy"
        try:
            mm.convert_mm_table(data_dir, fid, item_indexer, itemnum, path, on_bad_record, copies)
            out[fid] = mm.open_mm_table(path)
        finally:
            if scratch is None:  # also after a failed conversion
                shutil.rmtree(folder, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- the cache

# tok_type is not stored: a token is a profile exactly when it opens a line that has one, so it
# is rebuilt on load, and the cache holds 5 bytes per token (tok_id int32 + tok_action int8).
_SEQ_FIELDS = ("tok_id", "tok_action", "line_offsets", "line_user", "has_profile")
_TABLE_FIELDS = ("item_sparse", "item_array", "item_continual",
                 "user_sparse", "user_array", "user_continual")


def _with_token_types(**fields) -> SequenceData:
    tok_type = np.full(len(fields["tok_id"]), TOKEN_ITEM, np.int8)
    starts = np.asarray(fields["line_offsets"][:-1])
    tok_type[starts[np.asarray(fields["has_profile"], dtype=bool)]] = TOKEN_PROFILE
    return SequenceData(tok_type=tok_type, **fields)


_CACHE_TMP = ".tmp-"
_LEGACY_CACHE_TMP = re.compile(r"^v1-[0-9a-f]{16}\.tmp")  # tempfile.mkdtemp names before issue 17


def _write_cache_atomically(dataset: Dataset, path: Path, source: dict | None = None) -> None:
    """Write into a temporary sibling folder, then rename: a crash never leaves half a cache.
    `source` (data_dir, mm ids, policy) is recorded so a later write can drop outdated entries."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # killed writers' leftovers, of this version and of older ones
        tempdirs.remove_stale(path.parent, _CACHE_TMP, _LEGACY_CACHE_TMP)
        tmp = tempdirs.make_temp_dir(path.parent, _CACHE_TMP, path.name)
    except OSError as e:
        log.warning("cannot write the parse cache next to the data (%s); pass --cache_dir", e)
        return
    try:
        for name in _SEQ_FIELDS:
            np.save(tmp / f"{name}.npy", getattr(dataset.seqs, name))
        for name in _TABLE_FIELDS:
            np.save(tmp / f"{name}.npy", getattr(dataset.tables, name))
        for fid, table in dataset.tables.mm.items():
            _save_mm_table(table, tmp / f"mm_{fid}.npy", path.name)
        np.save(tmp / "item_valid.npy", dataset.item_valid)
        meta = {"version": CACHE_VERSION, "schema": dataset.schema.to_dict(),
                "itemnum": dataset.itemnum, "usernum": dataset.usernum, "stats": dataset.stats,
                "source": source}
        (tmp / "meta.json").write_text(json.dumps(meta))  # written last: marks the cache complete
        os.replace(tmp, path)
        _remove_outdated(path, source)
    except OSError as e:  # disk full, or a concurrent writer won the rename: the parse stands
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "meta.json").exists():
            log.warning("could not write the parse cache %s (%s); continuing without it", path, e)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_outdated(path: Path, source: dict | None) -> None:
    """Delete other entries of the same source (data_dir, mm ids, policy): their inputs changed
    since, so no run will read them again."""
    if source is None:
        return
    for other in path.parent.glob("v1-*"):
        if other == path or not (other / "meta.json").is_file():
            continue
        try:
            same = json.loads((other / "meta.json").read_text()).get("source") == source
        except (OSError, ValueError, AttributeError):
            continue
        if same:
            log.info("removing the outdated parse cache %s", other)
            shutil.rmtree(other, ignore_errors=True)


def _read_cache_or_discard(path: Path) -> Dataset | None:
    """The cached parse, or None (entry removed, with a warning) when it is damaged: a truncated
    array or a bad meta.json costs a re-parse, not the run."""
    try:
        dataset = _read_cache(path)
        _check_cache_shapes(dataset)
        return dataset
    except (OSError, ValueError, KeyError, TypeError, EOFError, IndexError, AttributeError) as e:
        log.warning("the parse cache %s is damaged (%s: %s): parsing the data again",
                    path, type(e).__name__, str(e)[:200])
        shutil.rmtree(path, ignore_errors=True)
        return None


def _check_cache_shapes(d: Dataset) -> None:
    """Sizes the arrays must agree on; ValueError names the first that does not."""
    s, t = d.seqs, d.tables
    checks = {"line_offsets": len(s.line_offsets) == s.num_lines + 1
              and (s.num_lines == 0 or int(s.line_offsets[-1]) == len(s.tok_id)),
              "tok_action": len(s.tok_action) == len(s.tok_id),
              "has_profile": len(s.has_profile) == s.num_lines,
              "item_valid": len(d.item_valid) == d.itemnum + 1}
    checks.update({name: len(getattr(t, name)) == (d.itemnum if name.startswith("item")
                                                   else d.usernum) + 1
                   for name in _TABLE_FIELDS})
    checks.update({f"mm_{fid}": m.shape == (d.itemnum + 1, d.schema.mm_dims[fid])
                   for fid, m in t.mm.items()})
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"{bad[0]}.npy does not match the other arrays")


def _save_mm_table(table: np.ndarray, dest: Path, cache_name: str) -> None:
    """A table converted in this parse's scratch folder is moved (its memmap stays valid: same
    file); any other is written (np.save)."""
    name = getattr(table, "filename", None)
    if name and Path(name).parent.name.startswith(f"{_CACHE_TMP}{cache_name}.mm@") \
            and Path(name).exists():
        os.replace(name, dest)
    else:
        np.save(dest, table)


def _read_cache(path: Path) -> Dataset:
    meta = json.loads((path / "meta.json").read_text())
    load = lambda name: np.load(path / f"{name}.npy", mmap_mode="r")  # noqa: E731
    schema = FeatureSchema.from_dict(meta["schema"])
    return Dataset(
        schema=schema,
        seqs=_with_token_types(**{n: load(n) for n in _SEQ_FIELDS}),
        tables=FeatureTables(**{n: load(n) for n in _TABLE_FIELDS},
                             mm={fid: load(f"mm_{fid}") for fid in schema.mm_dims}),
        itemnum=meta["itemnum"], usernum=meta["usernum"],
        item_valid=load("item_valid"), stats=meta["stats"],
    )
