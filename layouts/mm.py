"""Multimodal embedding tables (feature ids 81-86) of both layouts, converted once into a float16
memory-mapped `(itemnum + 1, D)` table (row 0 and items without a vector: zeros).

Sources (../shared/docs/data-format.md "creative_emb", data-format-v2.md §6), found by name, the
dimension read from the name and checked against the vectors:
    V1  creative_emb/emb_<fid>_<dim>.pkl      pickled {creative id: vector} (loaded whole: V1
                                              ships only the 32-d feature 81 this way)
    V1  creative_emb/emb_<fid>_<dim>/         JSON lines {"anonymous_cid": id, "emb": [floats]},
                                              files *.json or part-*
    V2  mm_emb/emb_<fid>_<dim>_parquet/       *.parquet: anonymous_cid (string or int), emb
                                              (list<double|float> or a JSON string)
Two sources for one feature id are an error (which one is meant is ambiguous).

Creative ids (OIDs) are ints in the indexer and decimal strings in V2's anonymous_cid: a lookup
accepts either spelling. Vectors of creatives outside the indexer are counted, not an error (V2
ships vectors for unseen candidates). A vector with a NaN or infinite value, or one beyond
float16's range, is a bad record (error naming the file and row or key; with skip: the item gets
no vector, counted); so is a vector of the wrong length, except that when the FIRST vector
disagrees with the name the whole source is wrong (clear error).

The conversion streams: chunks of CHUNK_ROWS vectors are read (a parquet batch, JSON lines),
rounded to float16 and written with pwrite straight into the file; neither the table nor the
source is ever held in memory (the pickle excepted, see above). Memory is a chunk plus a coverage
bitmap of one byte per item. The table is written to a temporary name and renamed.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from dataset import BadRecords, DataError, json_loads, load_pickle_checked

log = logging.getLogger(__name__)

CHUNK_ROWS = 8192
TABLE_DTYPE = np.float16
_NAME = re.compile(r"^emb_(?P<fid>[^_]+)_(?P<dim>\d+)(?P<suffix>\.pkl|_parquet)?$")
# folder -> {name suffix: kind}
_LAYOUT_FOLDERS = {"creative_emb": {".pkl": "pickle", "": "jsonl"},
                   "mm_emb": {"_parquet": "parquet"}}


@dataclass(frozen=True)
class MMSource:
    path: Path
    kind: str  # "pickle" | "jsonl" | "parquet"
    dim: int


def find_sources(data_dir: Path, fid: str) -> list[MMSource]:
    """Every source of feature `fid` in either layout's folder (normally zero or one)."""
    out = []
    for folder, kinds in _LAYOUT_FOLDERS.items():
        root = Path(data_dir) / folder
        if not root.is_dir():
            continue
        for p in sorted(root.iterdir()):
            m = _NAME.match(p.name)
            kind = kinds.get(m["suffix"] or "") if m and m["fid"] == fid else None
            if kind == "pickle" and p.is_file() or kind == "jsonl" and p.is_dir() \
                    or kind == "parquet" and (p.is_dir() or p.is_file()):
                out.append(MMSource(p, kind, int(m["dim"])))
    return out


def find_source(data_dir: Path, fid: str) -> MMSource | None:
    """The one source of `fid`, None when there is none; DataError when there are several."""
    sources = find_sources(data_dir, fid)
    if len(sources) > 1:
        names = ", ".join(str(s.path.relative_to(data_dir)) for s in sources)
        raise DataError(f"{data_dir}: multimodal feature {fid} has {len(sources)} sources ({names}): "
                        "ambiguous, keep one")
    return sources[0] if sources else None


def dim_from_name(path: Path) -> int:
    m = _NAME.match(Path(path).name)
    if m is None:
        raise DataError(f"{path}: not a multimodal source name (emb_<fid>_<dim>[.pkl|_parquet])")
    return int(m["dim"])


# --------------------------------------------------------------------------- reading chunks

# (creative ids, item RIDs (n,) int64, (n, D) float32, where(k)): creatives that are items only
Chunk = tuple[list, np.ndarray, np.ndarray, Callable[[int], str]]


class _LengthCheck:
    """Vector length against the name's dim: the first vector wrong -> the source is wrong.
    Also maps creative ids to RIDs and counts the vectors of creatives that are no item (unused,
    so neither their length nor their values matter)."""

    def __init__(self, source: MMSource, bad: BadRecords, item_oid_to_rid, n_rows: int):
        self.source, self.bad, self.seen_good = source, bad, False
        self.rid_of, self.n_rows, self.unmapped = oid_lookup(item_oid_to_rid), n_rows, 0
        self.index = _IntOidIndex.build(item_oid_to_rid) if source.kind == "parquet" else None

    def rids(self, cids: list) -> np.ndarray:
        """(n,) int64 RIDs, 0 for creatives outside 1..n_rows (counted)."""
        return self._counted(np.fromiter((self.rid_of(c) for c in cids), np.int64, len(cids)))

    def arrow_rids(self, column) -> np.ndarray:
        """The same for an arrow column of ids: vectorised when the indexer's keys are ints and
        the ids are integers or decimal strings, else id by id."""
        import pyarrow as pa
        import pyarrow.compute as pc
        if self.index is not None:
            try:
                ints = pc.cast(column, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
                return self._counted(self.index.lookup(ints))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # not all decimal integers: the general path below
        return self.rids(column.to_pylist())

    def _counted(self, rids: np.ndarray) -> np.ndarray:
        rids[(rids < 0) | (rids > self.n_rows)] = 0
        self.unmapped += int((rids == 0).sum())
        return rids

    def __call__(self, length: int, where: str) -> bool:
        if length == self.source.dim:
            self.seen_good = True
            return True
        if not self.seen_good:
            raise DataError(f"{where}: vector of dimension {length}, but the name "
                            f"{self.source.path.name} says dimension {self.source.dim}")
        self.bad(f"{where}: expected a vector of dimension {self.source.dim}, got shape ({length},)")
        return False


def iter_chunks(source: MMSource, bad: BadRecords, check: _LengthCheck) -> Iterator[Chunk]:
    """Yield the vectors of items in chunks of at most CHUNK_ROWS, each checked for its length."""
    if source.kind == "parquet":
        yield from _parquet_chunks(source, check)
    elif source.kind == "pickle":
        data = load_pickle_checked(source.path)
        if not isinstance(data, dict):
            raise DataError(f"{source.path}: expected a pickled dict of creative id -> vector")
        rows = ((f"{source.path}: key {cid!r}", cid, vec) for cid, vec in data.items())
        yield from _python_chunks(rows, source.dim, check, bad)
    else:
        yield from _python_chunks(_jsonl_rows(source.path, bad), source.dim, check, bad)


def _jsonl_rows(folder: Path, bad: BadRecords):
    parts = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.suffix == ".json" or p.name.startswith("part-")))
    for part in parts:
        with open(part, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{part}:{lineno}"
                try:
                    obj = json_loads(line)
                    yield where, obj["anonymous_cid"], obj["emb"]
                except (ValueError, KeyError, TypeError) as e:
                    bad(f"{where}: expected {{\"anonymous_cid\": id, \"emb\": [floats]}} "
                        f"({type(e).__name__}: {e})")


def _python_chunks(rows, dim: int, check: _LengthCheck, bad: BadRecords) -> Iterator[Chunk]:
    """(where, cid, vector as a Python list or array) rows -> chunks."""
    wheres, cids, rids, vecs = [], [], [], []
    for where, cid, vec in rows:
        rid = int(check.rids([cid])[0])
        if rid == 0:
            continue
        if isinstance(vec, str):  # the official V2 loader accepts emb as a JSON string too
            vec = _json_vector(vec, where, bad)
        try:
            arr = np.asarray(vec, dtype=np.float32)
        except (ValueError, TypeError):
            arr = None
        if arr is None or arr.ndim != 1:
            bad(f"{where}: creative {cid!r}: expected a vector of {dim} numbers (dimension {dim})")
            continue
        if check(len(arr), f"{where}: creative {cid!r}"):
            wheres.append(where), cids.append(cid), rids.append(rid), vecs.append(arr)
        if len(cids) == CHUNK_ROWS:
            yield cids, np.asarray(rids, np.int64), np.stack(vecs), wheres.__getitem__
            wheres, cids, rids, vecs = [], [], [], []
    if cids:
        yield cids, np.asarray(rids, np.int64), np.stack(vecs), wheres.__getitem__


def _json_vector(text: str, where: str, bad: BadRecords):
    try:
        return json_loads(text)
    except ValueError:
        bad(f"{where}: emb is a string but not a JSON list of numbers")
        return None


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file()
                   and (p.suffix == ".parquet" or p.name.startswith("part-")))
    if not files:
        raise DataError(f"{path}: no *.parquet part files")
    return files


def _parquet_chunks(source: MMSource, check: _LengthCheck) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    for path in _parquet_files(source.path):
        try:
            # pre_buffer (pyarrow's default) reads ahead whole files: memory would follow the
            # part file's size instead of one row group's
            pf = pq.ParquetFile(path, pre_buffer=False)
            names = pf.schema_arrow.names
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        if "anonymous_cid" not in names or "emb" not in names:
            raise DataError(f"{path}: expected columns anonymous_cid and emb, found {names}")
        row0, batches = 0, pf.iter_batches(batch_size=CHUNK_ROWS, columns=["anonymous_cid", "emb"],
                                           use_threads=False)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"{path}: unreadable after row {row0} ({e})") from None
            if batch is None:
                break
            yield _parquet_batch(batch, path, row0, source.dim, check)
            row0 += batch.num_rows


def _parquet_batch(batch, path: Path, row0: int, dim: int, check: _LengthCheck) -> Chunk:
    """One record batch -> a chunk; rows with a null id or vector are skipped (no vector)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    column, emb = batch.column(0), batch.column(1)
    cids = _LazyIds(column)  # Python objects only for the few rows an error names
    where = lambda k: f"{path}: row {row0 + int(k)}"  # noqa: E731
    if pa.types.is_string(emb.type) or pa.types.is_large_string(emb.type):
        rows = ((where(k), c, t) for k, (c, t) in enumerate(zip(column.to_pylist(), emb.to_pylist()))
                if c is not None and t is not None)
        chunks = list(_python_chunks(rows, dim, check, check.bad))
        if not chunks:
            return [], np.zeros(0, np.int64), np.zeros((0, dim), np.float32), where
        return chunks[0]  # a batch holds at most CHUNK_ROWS rows: one chunk
    if not (pa.types.is_list(emb.type) or pa.types.is_large_list(emb.type)
            or pa.types.is_fixed_size_list(emb.type)):
        raise DataError(f"{path}: column emb has type {emb.type}, expected list<double> "
                        "(or list<float>, or a JSON string)")
    lengths = pc.list_value_length(emb).fill_null(-1).to_numpy(zero_copy_only=False)
    values = emb.flatten().to_numpy(zero_copy_only=False)  # null elements -> NaN: bad below
    rids = check.arrow_rids(column)  # null or unknown ids -> 0: no vector
    present = (lengths >= 0) & (rids > 0)
    good = present & (lengths == dim)
    first = np.flatnonzero(present)[:1]
    if len(first) and good[first[0]]:
        check.seen_good = True  # the first vector agrees with the name: later ones are records
    for k in np.flatnonzero(present & ~good):
        check(int(lengths[k]), f"{where(k)}: creative {cids[k]!r}")
    rows = np.flatnonzero(good)
    if len(rows) == len(lengths):  # the usual batch: every row an item's vector, no copy
        vecs = values.reshape(len(rows), dim)
    elif (lengths[lengths >= 0] == dim).all():  # some rows unused: take whole rows
        vecs = values.reshape(-1, dim)[good[lengths >= 0]]
    else:  # flatten() drops null lists: the values are the non-null rows' concatenation
        keep_values = np.repeat(good[lengths >= 0], lengths[lengths >= 0])
        vecs = values[keep_values].reshape(len(rows), dim)
    return _LazyIds(column, rows), rids[rows], vecs.astype(np.float32, copy=False), \
        lambda j: where(rows[j])


class _LazyIds:
    """An arrow id column (optionally some of its rows) indexed like a list of Python ids."""

    def __init__(self, column, rows: np.ndarray | None = None):
        self.column, self.rows = column, rows

    def __getitem__(self, k: int):
        return self.column[int(k if self.rows is None else self.rows[k])].as_py()

    def __len__(self) -> int:
        return len(self.column) if self.rows is None else len(self.rows)


class _IntOidIndex:
    """indexer['i'] as sorted int64 arrays (16 bytes per item, not per table cell), for
    vectorised lookups of a whole parquet batch of ids."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        order = np.argsort(keys, kind="stable")
        self.keys, self.values = keys[order], values[order]

    @classmethod
    def build(cls, mapping) -> "_IntOidIndex | None":
        """None unless `mapping` is a dict of int keys to int values."""
        if type(mapping) is not dict or not mapping:
            return None
        try:
            if not all(type(k) is int for k in mapping):
                return None
            keys = np.fromiter(mapping.keys(), np.int64, len(mapping))
            values = np.fromiter(mapping.values(), np.int64, len(mapping))
        except (OverflowError, TypeError, ValueError):
            return None
        return cls(keys, values)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """(n,) int64 ids -> (n,) int64 RIDs, 0 when unknown."""
        pos = np.minimum(np.searchsorted(self.keys, ids), len(self.keys) - 1)
        return np.where(self.keys[pos] == ids, self.values[pos], 0)


# --------------------------------------------------------------------------- creative ids

def oid_lookup(item_oid_to_rid) -> Callable[[object], int]:
    """Creative id (int, or decimal string) -> item RID, 0 when unknown. `item_oid_to_rid` is
    anything with `.get` (indexer['i'], keyed by int or by str)."""
    def rid_of(cid) -> int:
        if isinstance(cid, bool) or not isinstance(cid, int | str) or len(str(cid)) > 40:
            return 0
        r = item_oid_to_rid.get(cid)
        if r is None and isinstance(cid, int):
            r = item_oid_to_rid.get(str(cid))
        elif r is None and isinstance(cid, str) and cid.isascii() and cid.isdecimal():
            r = item_oid_to_rid.get(int(cid))
        return r if isinstance(r, int | np.integer) and not isinstance(r, bool) else 0
    return rid_of


def mapped_chunks(source: MMSource, item_oid_to_rid, n_rows: int, bad: BadRecords, counts: dict):
    """Yield (rids (n,) int64 in 1..n_rows, vectors (n, D) float16) of the usable vectors;
    counts["unmapped"] (creative not an item) and ["nonfinite"] are set."""
    check = _LengthCheck(source, bad, item_oid_to_rid, n_rows)
    for cids, rids, vecs, where in iter_chunks(source, bad, check):
        with np.errstate(over="ignore", invalid="ignore"):
            half = vecs.astype(TABLE_DTYPE)
        finite = np.isfinite(half).all(axis=1)
        for k in np.flatnonzero(~finite):
            what = "NaN or infinite" if not np.isfinite(vecs[k]).all() else "beyond float16's +-65504"
            bad(f"{where(k)}: creative {cids[k]!r}: the vector has a value {what}")
        counts["nonfinite"] += int((~finite).sum())
        counts["unmapped"] = check.unmapped
        yield rids[finite], half[finite]


# --------------------------------------------------------------------------- the table

@dataclass
class MMInfo:
    fid: str
    dim: int
    source: str
    path: str
    covered: int          # items that got a vector
    itemnum: int
    unmapped: int         # vectors of creatives outside the indexer (unused)
    bad_skipped: int      # bad records skipped (--on_bad_record skip)
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def convert_mm_table(data_dir: Path, fid: str, item_oid_to_rid, itemnum: int, out_path: Path,
                     on_bad_record: str = "error",
                     copies: tuple[np.ndarray, np.ndarray] | None = None) -> MMInfo:
    """Convert feature `fid` of `data_dir` into the float16 .npy table `out_path`,
    (itemnum + 1, D), row r = the vector of item RID r (zeros when it has none). `copies`
    (dst, src): row dst[i] also gets row src[i]'s vector (inference: a creative on two rows)."""
    start = time.perf_counter()
    source = find_source(Path(data_dir), fid)
    if source is None:
        raise DataError(f"{data_dir}: no creative_emb/emb_{fid}_<dim>.pkl, creative_emb/emb_{fid}_<dim>/ "
                        f"or mm_emb/emb_{fid}_<dim>_parquet/ for multimodal feature {fid}")
    bad, out_path = BadRecords(on_bad_record), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.tmp{os.getpid()}")
    offset = _create_npy(tmp, (itemnum + 1, source.dim), TABLE_DTYPE)
    covered = np.zeros(itemnum + 1, bool)  # one byte per item: 1/(2 D) of the table
    counts = {"unmapped": 0, "nonfinite": 0}
    fd = os.open(tmp, os.O_RDWR)
    try:
        for rids, half in mapped_chunks(source, item_oid_to_rid, itemnum, bad, counts):
            _write_rows(fd, offset, rids, half)
            covered[rids] = True
        if copies is not None and len(copies[0]):
            _copy_rows(tmp, fd, offset, (itemnum + 1, source.dim), *copies)
            covered[copies[0]] = covered[copies[1]]
        os.close(fd)
        fd = -1
        os.replace(tmp, out_path)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()
    info = MMInfo(fid, source.dim, str(source.path), str(out_path), int(covered.sum()), itemnum, counts["unmapped"], bad.count,
                  time.perf_counter() - start)
    log.info("multimodal %s (%s, %d-d): %d of %d items have a vector (%.1f%%); %d vectors of "
             "creatives outside the indexer; %d bad records skipped; %.1f s", fid, source.path.name,
             source.dim, info.covered, itemnum, 100.0 * info.covered / max(itemnum, 1),
             info.unmapped, info.bad_skipped, info.seconds)
    return info


def open_mm_table(path: Path) -> np.ndarray:
    """The converted table, memory-mapped read-only: (itemnum + 1, D) float16."""
    table = np.load(path, mmap_mode="r")
    if table.ndim != 2 or table.dtype != TABLE_DTYPE:
        raise DataError(f"{path}: expected a 2-d float16 table, got {table.dtype} {table.shape}")
    return table


def _create_npy(path: Path, shape: tuple[int, int], dtype) -> int:
    """A .npy file of zeros (sparse on disk) -> the byte offset of its data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                "shape": shape})
        offset = f.tell()
        f.truncate(offset + shape[0] * shape[1] * np.dtype(dtype).itemsize)
    return offset


def _write_rows(fd: int, offset: int, rids: np.ndarray, rows: np.ndarray) -> None:
    """pwrite rows (n, D) at their RIDs, one call per run of consecutive RIDs. pwrite, not a
    memmap: written pages stay in the page cache, never in this process's resident set."""
    if not len(rids):
        return
    order = np.argsort(rids, kind="stable")  # a repeated id: the later vector wins
    rids, rows = rids[order], np.ascontiguousarray(rows[order])
    row_bytes = rows.shape[1] * rows.itemsize
    breaks = np.flatnonzero(np.diff(rids) != 1) + 1
    for s, e in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rids)]])):
        os.pwrite(fd, rows[s:e].tobytes(), offset + int(rids[s]) * row_bytes)


def _copy_rows(path: Path, fd: int, offset: int, shape: tuple[int, int], dst: np.ndarray,
               src: np.ndarray, chunk: int = 65536) -> None:
    """Row dst[i] := row src[i] of the table being written, `chunk` rows at a time (read
    through a map of the file: the page cache already holds what pwrite wrote)."""
    table = np.memmap(path, TABLE_DTYPE, mode="r", offset=offset, shape=shape)
    try:
        for s in range(0, len(dst), chunk):
            _write_rows(fd, offset, dst[s:s + chunk], np.asarray(table[src[s:s + chunk]]))
    finally:
        del table
