"""Property tests: random corruptions of a small V1 directory end in a sane load or a DataError.

Every example copies a pristine directory (conftest.small_users / small_items / small_mm,
written by layouts/write_v1) into a fresh temporary folder, corrupts one file, and loads it with
`load_dataset`. The only acceptable outcomes are
- a successful load whose arrays are self-consistent (ids inside the indexer, offsets monotone,
  sparse ids inside their vocabularies), or
- a `DataError` whose message names the file it is about;
anything else (ValueError, TypeError, OverflowError, ...) is a bug: a user would see a traceback
instead of the one-line `error: ...` of main.cli().

Hypothesis runs derandomized (the same examples every run, no example database) with a bounded
number of examples, so the file takes a few seconds and a failure reproduces exactly.

The last section holds minimal reproductions of the bugs these properties found (now fixed),
so they stay fixed.
"""
from __future__ import annotations

import io
import json
import pickle
import shutil
import string
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from conftest import SMALL_KINDS, small_items, small_mm, small_users
from dataset import DataError, load_dataset
from layouts.write_v1 import write_v1_dataset

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=40,
                suppress_health_check=[HealthCheck.too_slow], print_blob=False)
FEW = settings(FAST, max_examples=20)

# The pristine directory: users 1..4 (dave, 4, has no items), items 1..6, mm feature 81 (32-d)
# for creatives 9001, 9002, 9004.
USERNUM, ITEMNUM, MM_DIM = 4, 6, 32
MM_CIDS = (9001, 9002, 9004)
FILE_NAMES = ("seq.jsonl", "seq_offsets.pkl", "indexer.pkl", "item_feat_dict.json",
              "schema.json", "emb_81_32")
ITEM_FIDS = [f for f, k in SMALL_KINDS.items() if k.startswith("item")]
USER_FIDS = [f for f, k in SMALL_KINDS.items() if k.startswith("user")]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """One clean directory per creative_emb format ("pkl": emb_81_32.pkl, "jsonl": a folder)."""
    root = tmp_path_factory.mktemp("pristine")
    out = {}
    for fmt in ("pkl", "jsonl"):
        out[fmt] = root / fmt
        write_v1_dataset(out[fmt], small_users(), small_items(), SMALL_KINDS, small_mm(), fmt)
    return out


@contextmanager
def fresh_copy(src: Path):
    """A private copy of `src` for one example (and a cache folder beside it)."""
    with tempfile.TemporaryDirectory(prefix="corrupt-") as tmp:
        d = Path(tmp) / "data"
        shutil.copytree(src, d)
        yield d


# --------------------------------------------------------------------------- the property

def names_a_file(message: str) -> bool:
    return any(name in message for name in FILE_NAMES)


def load_or_data_error(d: Path, cache_dir: Path | None = None, on_bad_record: str = "error"):
    """-> the Dataset or the DataError; any other exception propagates (that is the bug)."""
    try:
        data = load_dataset(d, cache_dir=cache_dir, use_cache=cache_dir is not None,
                            on_bad_record=on_bad_record)
    except DataError as e:
        assert names_a_file(str(e)), f"the message names no file: {e}"
        note_outcome(f"DataError: {str(e).removeprefix(str(d)).split(':')[0].strip('/')}")
        return e
    check_invariants(data)
    note_outcome("loaded")
    return data


def note_outcome(label: str) -> None:
    """Outcome statistics for `pytest --hypothesis-show-statistics` (are examples loading?)."""
    if currently_in_test_context():
        event(label)


def check_invariants(data) -> None:
    """What a successful load promises the rest of the pipeline."""
    s, t, sc = data.seqs, data.tables, data.schema
    off = np.asarray(s.line_offsets)
    assert s.num_lines > 0 and off[0] == 0 and off[-1] == len(s.tok_id)
    assert np.all(np.diff(off) > 0), "every kept line has at least one token"
    tok_type, tok_id = np.asarray(s.tok_type), np.asarray(s.tok_id)
    assert set(np.unique(tok_type).tolist()) <= {1, 2}
    items, users = tok_id[tok_type == 1], tok_id[tok_type == 2]
    assert items.size and items.min() >= 1 and items.max() <= data.itemnum
    assert users.size == 0 or (users.min() >= 1 and users.max() <= data.usernum)
    assert np.all(np.isin(np.asarray(s.line_user), np.arange(1, data.usernum + 1)))
    assert t.item_sparse.shape[0] == t.item_array.shape[0] == data.itemnum + 1
    assert t.user_sparse.shape[0] == t.user_array.shape[0] == data.usernum + 1
    for side in ("item", "user"):
        sparse, array = getattr(t, f"{side}_sparse"), getattr(t, f"{side}_array")
        for j, fid in enumerate(getattr(sc, f"{side}_sparse")):
            assert 0 <= sparse[:, j].min() and sparse[:, j].max() <= sc.vocab[fid]
        for j, fid in enumerate(getattr(sc, f"{side}_array")):
            assert 0 <= array[:, j].min() and array[:, j].max() <= sc.vocab[fid]
    for fid, table in t.mm.items():
        assert table.shape == (data.itemnum + 1, sc.mm_dims[fid])


def assert_cache_clean_or_complete(cache: Path, outcome) -> None:
    """A failed parse writes nothing; a successful one leaves exactly one complete cache."""
    entries = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    if isinstance(outcome, DataError):
        assert entries == [], f"a failed parse left {entries}"
    else:
        assert len(entries) == 1 and entries[0].startswith("v1-") and ".tmp" not in entries[0]
        assert (cache / entries[0] / "meta.json").is_file()


# --------------------------------------------------------------------------- byte-level edits

_pos = st.integers(min_value=0, max_value=1 << 16)  # taken modulo the file length
byte_op = st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(1, 255)),
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), _pos, st.integers(1, 16)),
)


def apply_byte_op(data: bytes, op) -> bytes:
    kind, pos = op[0], op[1] % (len(data) + 1)
    if kind == "flip" and data:
        pos = min(pos, len(data) - 1)
        return data[:pos] + bytes([data[pos] ^ op[2]]) + data[pos + 1:]
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + op[2] + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + op[2]:]
    return data


def split_lines(data: bytes) -> list[bytes]:
    """Lines as layouts/v1.py iterates them (split on b'\\n' only, newline kept)."""
    return list(io.BytesIO(data))


def write_matching_offsets(d: Path) -> None:
    offsets, pos = [], 0
    for line in split_lines((d / "seq.jsonl").read_bytes()):
        offsets.append(pos)
        pos += len(line)
    (d / "seq_offsets.pkl").write_bytes(pickle.dumps(offsets, protocol=4))


LINE_OPS = ("delete_line", "duplicate_line", "swap_lines", "blank_line")
line_op = st.one_of(
    st.tuples(st.just("delete_line"), st.integers(0, 7)),
    st.tuples(st.just("duplicate_line"), st.integers(0, 7)),
    st.tuples(st.just("swap_lines"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("blank_line"), st.integers(0, 7)),
)


def apply_line_op(data: bytes, op) -> bytes:
    lines = split_lines(data)
    if not lines:
        return data
    k = op[1] % len(lines)
    if op[0] == "delete_line":
        del lines[k]
    elif op[0] == "duplicate_line":
        lines.insert(k, lines[k] if lines[k].endswith(b"\n") else lines[k] + b"\n")
    elif op[0] == "swap_lines":
        j = op[2] % len(lines)
        lines[k], lines[j] = lines[j], lines[k]
        if not all(x.endswith(b"\n") for x in lines[:-1]):  # keep the line count
            lines = [x if x.endswith(b"\n") else x + b"\n" for x in lines]
    elif op[0] == "blank_line":
        lines.insert(k, b"\n")
    return b"".join(lines)


@FAST
@given(ops=st.lists(st.one_of(byte_op, line_op), min_size=1, max_size=3),
       fix_offsets=st.booleans(), fmt=st.sampled_from(["pkl", "jsonl"]))
def test_seq_jsonl_byte_and_line_corruption(pristine, ops, fix_offsets, fmt):
    """Byte flips, truncation, insertion/deletion, line deletion/duplication/swaps in seq.jsonl,
    with seq_offsets.pkl left stale or rewritten to match (so the JSON parse itself is hit).
    Also checks that nothing is left in the cache folder after a failed parse."""
    with fresh_copy(pristine[fmt]) as d:
        data = (d / "seq.jsonl").read_bytes()
        for op in ops:
            data = apply_line_op(data, op) if op[0] in LINE_OPS else apply_byte_op(data, op)
        (d / "seq.jsonl").write_bytes(data)
        if fix_offsets:
            write_matching_offsets(d)
        cache = d.parent / "cache"
        outcome = load_or_data_error(d, cache_dir=cache)
        assert_cache_clean_or_complete(cache, outcome)


# --------------------------------------------------------------------------- JSON-valid junk

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4))
junk = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)
ids = lambda n: st.one_of(st.integers(0, n), st.integers(-3, n + 3),  # noqa: E731
                          st.integers(-(2 ** 63), 2 ** 63 - 1), junk)
_feature_value = st.one_of(st.integers(-2, 12), st.lists(st.integers(-2, 12), max_size=4),
                           st.floats(-1e6, 1e6), junk)
feature_dict = lambda fids: st.one_of(  # noqa: E731
    st.none(), st.just({}), junk,
    st.dictionaries(st.sampled_from(fids + ["999", "x"]), _feature_value, min_size=1, max_size=4))


def _not_u64_only(a) -> bool:
    return not (isinstance(a, int) and 2 ** 63 <= a < 2 ** 64)


# action_type ints in 2**63..2**64-1 are left out: that is the OverflowError bug that
# test_bug_action_type_beyond_int64 (below) tracks; widen this once it is fixed.
actions = st.one_of(st.none(), st.integers(0, 3), st.integers(-(2 ** 63), 2 ** 63 - 1),
                    junk.filter(_not_u64_only))
record6 = st.tuples(ids(USERNUM), ids(ITEMNUM), feature_dict(USER_FIDS),
                    feature_dict(ITEM_FIDS), actions, junk).map(list)
wrong_arity = st.lists(junk, max_size=9).filter(lambda r: len(r) != 6)
# Mostly plausible 6-field records with some wrong fields, some of the wrong arity or not a list.
record = st.one_of(record6, record6, wrong_arity, junk)
edit = st.tuples(st.integers(0, 3), st.integers(0, 120), record, st.booleans())


def apply_record_edits(d: Path, edits, drop_items) -> None:
    lines = [json.loads(x) for x in (d / "seq.jsonl").read_bytes().splitlines()]
    for line_no, pos, rec, replace in edits:
        recs = lines[line_no % len(lines)]
        pos = pos % (len(recs) + (0 if replace and recs else 1))
        if replace and recs:
            recs[pos] = rec
        else:
            recs.insert(pos, rec)
    (d / "seq.jsonl").write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    write_matching_offsets(d)
    if drop_items:  # record item features then count (items missing from item_feat_dict)
        feats = json.loads((d / "item_feat_dict.json").read_text())
        for reid in drop_items:
            feats.pop(str(reid), None)
        (d / "item_feat_dict.json").write_text(json.dumps(feats))


@FAST
@given(edits=st.lists(edit, min_size=1, max_size=3),
       drop_items=st.sets(st.integers(1, ITEMNUM), max_size=3),
       policy=st.sampled_from(["error", "skip"]))
def test_json_valid_but_wrong_records(pristine, edits, drop_items, policy):
    """Records of the wrong arity, strings where ints go, negative and huge ids, nested junk in
    any field (inserted or replacing a record), under both --on_bad_record policies."""
    with fresh_copy(pristine["pkl"]) as d:
        apply_record_edits(d, edits, drop_items)
        outcome = load_or_data_error(d, on_bad_record=policy)
        if policy == "skip" and not isinstance(outcome, DataError):
            assert outcome.stats["bad_records_skipped"] >= 0


@FEW
@given(edits=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 120), junk, st.booleans()),
                      min_size=1, max_size=2))
def test_records_that_are_not_lists(pristine, edits):
    with fresh_copy(pristine["pkl"]) as d:
        apply_record_edits(d, edits, set())
        load_or_data_error(d)


# --------------------------------------------------------------------------- item_feat_dict.json

_key = st.one_of(st.integers(-3, 12).map(str), st.text(alphabet=string.printable, max_size=4))


@FAST
@given(mode=st.sampled_from(["truncate", "bytes", "junk"]), cut=_pos,
       ops=st.lists(byte_op, min_size=1, max_size=3),
       changes=st.dictionaries(_key, st.one_of(junk, feature_dict(ITEM_FIDS)), min_size=1,
                               max_size=3))
def test_item_feat_dict_corruption(pristine, mode, cut, ops, changes):
    """Truncated (the brief's case), byte-corrupted, or JSON-valid with wrong keys/values."""
    with fresh_copy(pristine["pkl"]) as d:
        path = d / "item_feat_dict.json"
        data = path.read_bytes()
        if mode == "truncate":
            data = data[:cut % len(data)]
        elif mode == "bytes":
            for op in ops:
                data = apply_byte_op(data, op)
        else:
            obj = json.loads(data)
            obj.update(changes)
            data = json.dumps(obj).encode()
        path.write_bytes(data)
        outcome = load_or_data_error(d)
        if mode == "truncate":
            assert isinstance(outcome, DataError) and "item_feat_dict.json" in str(outcome)


# --------------------------------------------------------------------------- pickles

@FAST
@given(name=st.sampled_from(["indexer.pkl", "seq_offsets.pkl", "creative_emb/emb_81_32.pkl"]),
       ops=st.lists(byte_op, min_size=1, max_size=3))
def test_pickle_byte_corruption(pristine, name, ops):
    """Flipped, truncated, inserted or deleted bytes in each pickle."""
    with fresh_copy(pristine["pkl"]) as d:
        data = (d / name).read_bytes()
        for op in ops:
            data = apply_byte_op(data, op)
        (d / name).write_bytes(data)
        outcome = load_or_data_error(d)
        if isinstance(outcome, DataError) and not data:
            assert Path(name).name in str(outcome)


@FEW
@given(name=st.sampled_from(["indexer.pkl", "seq_offsets.pkl"]), cut=_pos)
def test_truncated_pickles(pristine, name, cut):
    with fresh_copy(pristine["pkl"]) as d:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[:cut % len(data)])
        outcome = load_or_data_error(d)
        assert isinstance(outcome, DataError) and str(d / name) in str(outcome)


_offsets_ok_types = st.one_of(st.integers(-5, 2000), st.integers(-(2 ** 70), 2 ** 70))


@FEW
@given(change=st.one_of(
    st.lists(_offsets_ok_types, max_size=6),                      # wrong values / lengths
    st.dictionaries(st.integers(0, 5), st.integers(0, 999), max_size=4),  # not a list
    _scalar))
def test_seq_offsets_wrong_integer_lists(pristine, change):
    """Well-formed pickles holding the wrong integers (or not a list at all)."""
    with fresh_copy(pristine["pkl"]) as d:
        (d / "seq_offsets.pkl").write_bytes(pickle.dumps(change, protocol=4))
        outcome = load_or_data_error(d)
        assert isinstance(outcome, DataError) and "seq_offsets.pkl" in str(outcome)


# --------------------------------------------------------------------------- creative_emb

_bad_dim = st.integers(0, 70).filter(lambda n: n != MM_DIM)
_bad_shape = st.one_of(_bad_dim.map(lambda n: (n,)),
                       st.sampled_from([(32, 1), (1, 32), (4, 8), (2, 32), ()]))


@FAST
@given(bad=st.dictionaries(st.sampled_from(MM_CIDS), _bad_shape, min_size=1, max_size=3),
       as_list=st.booleans(),
       extra=st.dictionaries(st.integers(10_000, 10_100), _bad_shape, max_size=2))
def test_mm_pickle_wrong_dimension(pristine, bad, as_list, extra):
    """emb_81_32.pkl vectors of the wrong shape for indexed creatives -> DataError naming the
    file and the creative; wrong shapes for creatives outside the indexer are unused."""
    with fresh_copy(pristine["pkl"]) as d:
        path = d / "creative_emb" / "emb_81_32.pkl"
        table = pickle.loads(path.read_bytes())
        for cid, shape in {**bad, **extra}.items():
            vec = np.ones(shape, np.float32)
            table[cid] = vec.tolist() if as_list else vec
        path.write_bytes(pickle.dumps(table, protocol=4))
        outcome = load_or_data_error(d)
        assert isinstance(outcome, DataError), "a wrong-dimension vector was accepted"
        msg = str(outcome)
        assert str(path) in msg and f"dimension {MM_DIM}" in msg
        assert any(f"creative {cid}" in msg for cid in bad)


@FAST
@given(bad=st.dictionaries(st.sampled_from(MM_CIDS), _bad_dim, min_size=1, max_size=3),
       cid_as_str=st.booleans())
def test_mm_jsonlines_wrong_dimension(pristine, bad, cid_as_str):
    """The JSON-lines folder: a line with a vector of the wrong length -> DataError naming the
    part file and its line."""
    with fresh_copy(pristine["jsonl"]) as d:
        (folder,) = [p for p in (d / "creative_emb").iterdir() if p.is_dir()]
        parts = sorted(folder.iterdir())
        lines = parts[0].read_text().splitlines()
        bad_lines = set()
        for cid, dim in bad.items():
            lines.append(json.dumps({"anonymous_cid": str(cid) if cid_as_str else cid,
                                     "emb": [0.5] * dim}))
            bad_lines.add(len(lines))
        parts[0].write_text("\n".join(lines) + "\n")
        outcome = load_or_data_error(d)
        assert isinstance(outcome, DataError)
        assert any(f"{parts[0]}:{n}" in str(outcome) for n in bad_lines), outcome


# --------------------------------------------------------------------------- bugs found

# Each of these is a minimal reproduction of an input for which load_dataset raises something
# other than DataError (the CLI then prints a traceback instead of a one-line error).

def _load_expecting_data_error(d: Path, file_name: str) -> None:
    with pytest.raises(DataError) as e:
        load_dataset(d, use_cache=False)
    assert file_name in str(e.value)


@pytest.mark.parametrize("offsets", [["a", 1, 2, 3], [None, 1, 2, 3], [{}, 1, 2, 3],
                                     [float("nan"), 1, 2, 3], [float("inf"), 1, 2, 3],
                                     np.zeros((4, 2), np.int64)],
                         ids=["str", "None", "dict", "nan", "inf", "2d"])
def test_bug_non_integer_offsets(pristine, offsets):
    with fresh_copy(pristine["pkl"]) as d:
        (d / "seq_offsets.pkl").write_bytes(pickle.dumps(offsets, protocol=4))
        _load_expecting_data_error(d, "seq_offsets.pkl")


@pytest.mark.parametrize("key,value", [("u", 5), ("i", 5), ("i", [1, 2, 3, 4, 5, 6]),
                                       ("f", None), ("f.200", 3)])
def test_bug_indexer_values_of_the_wrong_type(pristine, key, value):
    with fresh_copy(pristine["pkl"]) as d:
        indexer = pickle.loads((d / "indexer.pkl").read_bytes())
        if key.startswith("f."):
            indexer["f"][key[2:]] = value
        else:
            indexer[key] = value
        (d / "indexer.pkl").write_bytes(pickle.dumps(indexer, protocol=4))
        _load_expecting_data_error(d, "indexer.pkl")


@pytest.mark.parametrize("key", ["²", "①"])
def test_bug_unicode_digit_item_key(pristine, key):
    with fresh_copy(pristine["pkl"]) as d:
        path = d / "item_feat_dict.json"
        feats = json.loads(path.read_text())
        feats[key] = {"200": 1}
        path.write_text(json.dumps(feats))
        _load_expecting_data_error(d, "item_feat_dict.json")


@pytest.mark.parametrize("vec", ["abc", ["a"] * 32, [[1.0] * 32, [1.0]], {"a": 1}],
                         ids=["str", "strs", "ragged", "dict"])
def test_bug_mm_vector_not_numbers(pristine, vec):
    with fresh_copy(pristine["pkl"]) as d:
        path = d / "creative_emb" / "emb_81_32.pkl"
        table = pickle.loads(path.read_bytes())
        table[9001] = vec
        path.write_bytes(pickle.dumps(table, protocol=4))
        _load_expecting_data_error(d, "emb_81_32.pkl")


@pytest.mark.parametrize("cid", [[9001], {"a": 1}, "9" * 5000], ids=["list", "dict", "long"])
def test_bug_mm_jsonlines_odd_creative_id(pristine, cid):
    with fresh_copy(pristine["jsonl"]) as d:
        (folder,) = [p for p in (d / "creative_emb").iterdir() if p.is_dir()]
        part = sorted(folder.iterdir())[0]
        with open(part, "a") as f:
            f.write(json.dumps({"anonymous_cid": cid, "emb": [0.0] * MM_DIM}) + "\n")
        try:
            load_dataset(d, use_cache=False)  # an unknown creative may also simply be unused
        except DataError as e:
            assert "emb_81_32" in str(e)


@pytest.mark.parametrize("action", [-40000, 70000, 2 ** 40, 2 ** 63 - 1, -(2 ** 63)])
def test_action_types_outside_int16_load(pristine, action):
    with fresh_copy(pristine["pkl"]) as d:
        apply_record_edits(d, [(0, 0, [1, 1, None, {"200": 1}, action, 5], True)], set())
        assert not isinstance(load_or_data_error(d), DataError)


@pytest.mark.parametrize("action", [2 ** 63, 2 ** 64 - 1])
def test_bug_action_type_beyond_int64(pristine, action):
    with fresh_copy(pristine["pkl"]) as d:
        apply_record_edits(d, [(0, 0, [1, 1, None, {"200": 1}, action, 5], True)], set())
        load_or_data_error(d)
