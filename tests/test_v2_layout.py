"""The V2 (parquet) reader: parity with V1, each quirk of the spec, corrupt input.

Data is generated here (layouts.write_v2, or tables written by hand with pyarrow when a test
needs a schema the writer would never produce); ../shared is never read.
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DEMO_ITEMS, DEMO_USERS, SMALL_KINDS, small_items, small_mm, small_users
from layouts.data_rules import finite_float32, not_finite_float32
from dataset import ACTION_NULL, TOKEN_ITEM, TOKEN_PROFILE, DataError, load_dataset
from layouts import v2
from layouts.write_v2 import write_v2_dataset
from layouts.write_v1 import UserHistory, write_v1_dataset

SEQ_FIELDS = ("tok_id", "tok_type", "tok_action", "line_offsets", "line_user", "has_profile")
TABLES = ("item_sparse", "item_array", "item_continual", "user_sparse", "user_array",
          "user_continual")


def assert_same(a, b):
    for name in SEQ_FIELDS:
        np.testing.assert_array_equal(getattr(a.seqs, name), getattr(b.seqs, name), err_msg=name)
    for name in TABLES:
        np.testing.assert_array_equal(getattr(a.tables, name), getattr(b.tables, name),
                                      err_msg=name)
    np.testing.assert_array_equal(a.item_valid, b.item_valid)
    assert a.tables.mm.keys() == b.tables.mm.keys()
    for fid in a.tables.mm:
        np.testing.assert_array_equal(np.asarray(a.tables.mm[fid]), np.asarray(b.tables.mm[fid]),
                                      err_msg=f"mm {fid}")
    assert a.schema.to_dict() == b.schema.to_dict()
    assert (a.itemnum, a.usernum) == (b.itemnum, b.usernum)


# --------------------------------------------------------------------------- parity with V1

@pytest.mark.parametrize("parts,row_group", [(1, None), (3, 1)])
def test_same_data_as_v1_and_v2_parses_identically(tmp_path, parts, row_group):
    write_v1_dataset(tmp_path / "v1", small_users(), small_items(), SMALL_KINDS, small_mm())
    write_v2_dataset(tmp_path / "v2", small_users(), small_items(), SMALL_KINDS, small_mm(),
                     parts=parts, row_group_size=row_group)
    a = load_dataset(tmp_path / "v1", use_cache=False)
    b = load_dataset(tmp_path / "v2", use_cache=False)
    assert a.tables.mm  # the multimodal vectors (feature 81, read by default) take part too
    assert_same(a, b)
    # alice's null action is its own state in both, bob's action type 2 kept
    assert ACTION_NULL in b.seqs.tok_action.tolist() and 2 in b.seqs.tok_action.tolist()
    assert b.stats["null_action_types"] == 1 and b.stats["lines_without_items"] == 1


def test_groups_discovered_from_column_types_match_schema_json(tmp_path):
    write_v2_dataset(tmp_path / "a", small_users(), small_items(), SMALL_KINDS)
    write_v2_dataset(tmp_path / "b", small_users(), small_items(), SMALL_KINDS, schema_json=False)
    assert not (tmp_path / "b" / "schema.json").exists()
    assert_same(load_dataset(tmp_path / "a", use_cache=False),
                load_dataset(tmp_path / "b", use_cache=False))


def test_cache_roundtrip_and_invalidation(tmp_path):
    d = tmp_path / "v2"
    write_v2_dataset(d, small_users(), small_items(), SMALL_KINDS)
    first = load_dataset(d, cache_dir=tmp_path / "c")
    (entry,) = list((tmp_path / "c").iterdir())
    assert entry.name.startswith("v2-")
    tokens = len(first.seqs.tok_id)
    per_token = sum((entry / f"{n}.npy").stat().st_size - 128 for n in ("tok_id", "tok_action"))
    assert per_token == 5 * tokens  # int32 + int8 (128: the .npy header)
    assert_same(first, load_dataset(d, cache_dir=tmp_path / "c"))
    part = sorted((d / "seq").glob("*.parquet"))[0]
    table = pq.read_table(part)
    pq.write_table(table.slice(0, 1), part)  # fewer users: a new key, a new parse
    again = load_dataset(d, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").iterdir())) == 2 and again.seqs.num_lines < 3


def test_main_trains_on_v2(tmp_path):
    import main
    from demo_data import write_demo_dataset
    d = tmp_path / "demo"
    write_demo_dataset(d, num_users=DEMO_USERS, num_items=DEMO_ITEMS, seed=0, layout="v2")
    out = main.main(["--data_dir", str(d), "--num_epochs", "1", "--device", "cpu",
                     "--log_dir", str(tmp_path / "log"), "--tb_dir", str(tmp_path / "tb"),
                     "--ckpt_dir", str(tmp_path / "ckpt"), "--cache_dir", str(tmp_path / "c"),
                     "--batch_size", "64", "--maxlen", "20"])
    assert out and list((tmp_path / "ckpt").iterdir())


# --------------------------------------------------------------------------- quirks (hand-made)

def write_raw(d: Path, seq: pa.Table, items: pa.Table, users: pa.Table | None = None,
              indexer: dict | None = None, parts: int = 1) -> Path:
    for name, table in (("seq", seq), ("item_feat", items), ("user_feat", users)):
        if table is None:
            continue
        (d / name).mkdir(parents=True)
        bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
        for k in range(parts):
            pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]),
                           d / name / f"part-{k:05d}-x.parquet")
    with open(d / "indexer.pkl", "wb") as f:
        pickle.dump(indexer or INDEXER, f)
    return d


# 10 users, 6 items (OIDs as ints and one as a string), features 100 and 103 (+ 111 unused)
INDEXER = {"u": {f"user_{k}": k for k in range(1, 11)},
           "i": {30001: 1, 30002: 2, 30003: 3, "30004": 4, 30005: 5, 30006: 6},
           "f": {"100": {"a": 1, "b": 2, "c": 3}, "111": {"z": 1}, "103": {"m": 1, "f": 2},
                 "106": {"x": 1, "y": 2}},
           "a": {0: 1, 1: 2}}


def seq_of(rows, id_type=pa.int64(), item_type=pa.int64(), action_type=pa.int32()) -> pa.Table:
    """rows: [(user_id, [(item, action)] or None)]."""
    event = pa.struct([("item_id", item_type), ("action_type", action_type),
                       ("timestamp", pa.int64())])
    seqs = [None if ev is None else [{"item_id": i, "action_type": a, "timestamp": 100 + t}
                                     for t, (i, a) in enumerate(ev)] for _, ev in rows]
    return pa.table({"user_id": pa.array([u for u, _ in rows], id_type),
                     "seq": pa.array(seqs, pa.list_(event))})


def items_of(rows, value_type=pa.int64()) -> pa.Table:
    """rows: [(item_id, value of feature 100 or None)]."""
    return pa.table({"item_id": pa.array([i for i, _ in rows], pa.int64()),
                     "100": pa.array([v for _, v in rows], value_type)})


def users_of(rows) -> pa.Table:
    """rows: [(user_id, 103 or None, 106 list or None)]."""
    return pa.table({"user_id": pa.array([u for u, _, _ in rows], pa.int64()),
                     "103": pa.array([a for _, a, _ in rows], pa.int64()),
                     "106": pa.array([b for _, _, b in rows], pa.list_(pa.int64()))})


ITEMS = items_of([(1, 1), (2, 2), (3, 3), (4, 1), (5, None)])  # 5: all null; 6: no row


def lines(data) -> dict:
    """user RID -> [(id, type, action)]."""
    s, out = data.seqs, {}
    for k, u in enumerate(s.line_user.tolist()):
        a, b = s.line_offsets[k], s.line_offsets[k + 1]
        out[u] = list(zip(s.tok_id[a:b].tolist(), s.tok_type[a:b].tolist(),
                          s.tok_action[a:b].tolist()))
    return out


def test_quirks_nulls_gaps_missing_rows_widths(tmp_path):
    seq = seq_of([(7, [(1, 0), (2, None), (3, 2)]),       # null action, conversion
                  (3, [(4, 1), (5, 0), (6, 0), (0, 1)]),  # 5 all-null row, 6 no row, 0 no item
                  (10, [(5, 0)]),                         # nothing usable: no line
                  (9, None)],                             # null sequence
                 id_type=pa.uint32(), item_type=pa.int16(), action_type=pa.int8())
    users = users_of([(7, 2, [1, 2]), (3, None, None)])   # 3: all null -> no profile
    data = load_dataset(write_raw(tmp_path / "d", seq, ITEMS, users, parts=2), use_cache=False)
    assert (data.usernum, data.itemnum) == (10, 6)
    assert lines(data) == {
        7: [(7, TOKEN_PROFILE, 0), (1, TOKEN_ITEM, 0), (2, TOKEN_ITEM, ACTION_NULL),
            (3, TOKEN_ITEM, 2)],
        3: [(4, TOKEN_ITEM, 1)]}
    assert data.item_valid.tolist() == [False, True, True, True, True, True, False]
    assert data.tables.user_sparse[7].tolist() == [2]
    assert data.tables.user_array[7, 0].tolist() == [1, 2]
    assert data.schema.item_sparse == ["100"] and "111" not in data.schema.item_sparse
    st = data.stats
    assert st["lines_without_items"] == 2 and st["events_without_item"] == 1
    assert st["events_of_featureless_items"] == 3 and st["users_without_feature_row"] == 8
    assert st["items_without_feature_row"] == 1


def test_items_without_any_feature_columns_are_kept(tmp_path):
    seq = seq_of([(1, [(1, 0), (6, 1)])])
    items = pa.table({"item_id": pa.array([1, 2], pa.int64())})
    data = load_dataset(write_raw(tmp_path / "d", seq, items), use_cache=False)
    assert lines(data) == {1: [(1, TOKEN_ITEM, 0), (6, TOKEN_ITEM, 1)]}


def test_string_and_int_oids_normalise_to_int():
    assert v2.item_oid_to_rid(INDEXER["i"]) == {30001: 1, 30002: 2, 30003: 3, 30004: 4,
                                                30005: 5, 30006: 6}


def test_nonfinite_helpers():
    # 1e308 is finite in float64 but beyond float32: the column rule and the scalar rule agree
    values = [0.0, float("nan"), float("inf"), -float("inf"), 1e308, -3.0e38]
    assert not_finite_float32(np.array(values)).tolist() == [False, True, True, True, True, False]
    assert [finite_float32(v) is None for v in values] == not_finite_float32(values).tolist()


def test_nonfinite_continual_is_a_bad_record(tmp_path):
    seq = seq_of([(1, [(1, 0)])])
    items = pa.table({"item_id": pa.array([1, 2], pa.int64()),
                      "203": pa.array([1.5, float("nan")], pa.float64())})
    d = write_raw(tmp_path / "d", seq, items)
    with pytest.raises(DataError, match=r"item_feat/part-00000-x.parquet: row group 0, row 1: "
                                        r"feature 203: nan is not a finite float32 number"):
        load_dataset(d, use_cache=False)
    data = load_dataset(d, use_cache=False, on_bad_record="skip")
    assert data.tables.item_continual[:3, 0].tolist() == [0.0, 1.5, 0.0]
    assert data.stats["bad_records_skipped"] == 1


# --------------------------------------------------------------------------- corrupt input

def test_out_of_range_ids_name_file_group_row_and_skip_counts(tmp_path):
    seq = seq_of([(1, [(1, 0), (99, 1), (2, 0)]), (11, [(1, 0)]), (1, [(3, 0)])])
    d = write_raw(tmp_path / "d", seq, ITEMS)
    with pytest.raises(DataError) as e:
        load_dataset(d, use_cache=False)
    msg = str(e.value)
    assert "seq/part-00000-x.parquet: row group 0, row 1" in msg and "user_id 11" in msg
    data = load_dataset(d, use_cache=False, on_bad_record="skip")
    # user 11 outside 1..10, user 1's second row a duplicate, item 99 outside 1..6
    assert data.stats["bad_records_skipped"] == 3
    assert lines(data) == {1: [(1, TOKEN_ITEM, 0), (2, TOKEN_ITEM, 0)]}
    assert not (d / ".cache").exists()  # use_cache=False; and errors never write one


def test_item_out_of_range_message(tmp_path):
    d = write_raw(tmp_path / "d", seq_of([(1, [(1, 0), (99, 1)])]), ITEMS)
    with pytest.raises(DataError, match=r"row group 0, row 0 \(user_id 1\): item_id 99 is not "
                                        r"an item RID in 1..6"):
        load_dataset(d)
    assert not any((d / ".cache").glob("v2-*"))  # nothing half-written


def test_feature_value_outside_vocabulary(tmp_path):
    d = write_raw(tmp_path / "d", seq_of([(1, [(1, 0)])]), items_of([(1, 1), (2, 9)]))
    with pytest.raises(DataError, match=r"item_feat/part-00000-x.parquet: row group 0, row 1: "
                                        r"feature 100: value 9 is not a value id in 0..3"):
        load_dataset(d, use_cache=False)


@pytest.mark.parametrize("where", ["seq_user", "seq_item", "item_feature"])
def test_wrong_column_type(tmp_path, where):
    seq = (seq_of([(1, [("1", 0)])], item_type=pa.string()) if where == "seq_item"
           else seq_of([(1, [(1, 0)])]))
    if where == "seq_user":
        seq = pa.table({"user_id": pa.array(["1"]), "seq": seq.column("seq")})
    items = items_of([(1, "a")], pa.string()) if where == "item_feature" else ITEMS
    d = write_raw(tmp_path / "d", seq, items)
    with pytest.raises(DataError) as e:
        load_dataset(d, use_cache=False)
    folder = "item_feat" if where == "item_feature" else "seq"
    assert f"{folder}/part-00000-x.parquet: column" in str(e.value) and "string" in str(e.value)


def test_truncated_part_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    import main
    d = tmp_path / "d"
    write_v2_dataset(d, small_users(), small_items(), SMALL_KINDS)
    part = sorted((d / "seq").glob("*.parquet"))[1]
    part.write_bytes(part.read_bytes()[:-40])
    monkeypatch.setattr(sys, "argv", ["main.py", "--data_dir", str(d), "--num_epochs", "1",
                                      "--device", "cpu", "--log_dir", str(tmp_path / "l"),
                                      "--tb_dir", str(tmp_path / "t"), "--ckpt_dir",
                                      str(tmp_path / "k")])
    assert main.cli() == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(part) in last and "not a readable parquet" in last
    assert not any((d / ".cache").glob("v2-*"))


def test_neither_layout_names_what_was_found(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("x")
    (tmp_path / "d" / "stuff").mkdir()
    with pytest.raises(DataError, match=r"neither a V1 .* nor a V2 .*found: notes.txt, stuff/"):
        load_dataset(tmp_path / "d")


def test_missing_item_feat_folder(tmp_path):
    d = write_raw(tmp_path / "d", seq_of([(1, [(1, 0)])]), ITEMS)
    for p in (d / "item_feat").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="item_feat: missing"):
        load_dataset(d, use_cache=False)


def test_v2_mm_ids_read_from_mm_emb_and_an_absent_family_is_an_error(tmp_path):
    d = tmp_path / "v2"
    write_v2_dataset(d, small_users(), small_items(), SMALL_KINDS, small_mm())
    data = load_dataset(d, mm_emb_ids=["81"], use_cache=False)
    assert list(data.schema.mm_dims) == ["81"] and data.tables.mm["81"].dtype == np.float16
    with pytest.raises(DataError, match="mm_emb/emb_82_<dim>_parquet"):
        load_dataset(d, mm_emb_ids=["82"], use_cache=False)


def test_writer_matches_v1_users_given_by_generator(tmp_path):
    users = (UserHistory(f"u{k}", {"300": "M"}, [(9001 + k % 6, k % 2, 5)]) for k in range(5))
    write_v2_dataset(tmp_path / "v2", users, small_items(), SMALL_KINDS)
    data = load_dataset(tmp_path / "v2", use_cache=False)
    assert data.seqs.num_lines == 5 and data.seqs.has_profile.all()


@pytest.mark.parametrize("dataset", ["sasrec", "movielens-1m"])
def test_prepare_data_layout_v2_parses_as_v1(tmp_path, dataset):
    import prepare_data
    from test_prepare_data import make_ml1m, write
    if dataset == "sasrec":
        src = write(tmp_path / "pairs.txt", "2 10\n2 30\n1 30\n1 20\n1 10\n3 20\n")
    else:
        src = make_ml1m(tmp_path / "ml")
    for layout in ("v1", "v2"):
        assert prepare_data.main([dataset, "--src", str(src), "--out", str(tmp_path / layout),
                                  "--layout", layout, "--skip_check"]) == 0
    assert (tmp_path / "v2" / "seq").is_dir() and not (tmp_path / "v2" / "seq.jsonl").exists()
    assert_same(load_dataset(tmp_path / "v1", use_cache=False),
                load_dataset(tmp_path / "v2", use_cache=False))


def test_large_v2_writer_has_the_checklist_quirks(tmp_path):
    from layouts.large_v2 import write_large_v2
    info = write_large_v2(tmp_path / "d", users=300, items=400, seed=0, conversions=0.05, mm=True,
                          vocab_cap=50)
    data = load_dataset(tmp_path / "d", use_cache=False)
    assert len(data.seqs.tok_id) == info["tokens"]  # every event usable, every user a profile
    assert data.seqs.has_profile.all() and sorted(data.seqs.line_user.tolist()) == \
        list(range(1, 301))
    actions = set(data.seqs.tok_action.tolist())
    assert {0, 1, 2, ACTION_NULL} <= actions
    assert "111" not in data.schema.item_sparse and len(data.schema.item_sparse) == 13
    assert data.schema.user_array == ["106", "107", "108", "110"]
    cand = pq.read_table(tmp_path / "d" / "candidate")
    cold = pa.compute.struct_field(cand.column("100"), "cold_start")
    assert cand.column("100").null_count > 0 and pa.compute.sum(cold).as_py() > 0
    assert sorted(cand.column("retrieval_id").to_pylist()) == list(range(cand.num_rows))
    emb = pq.read_table(tmp_path / "d" / "mm_emb" / "emb_81_32_parquet")
    assert emb.schema.field("anonymous_cid").type == pa.string()
    assert len(emb.column("emb")[0]) == 32


def test_bench_datasets_times_each_directory(tmp_path):
    from benchmarks import data_dirs as bench_datasets
    for name in ("a", "b"):
        write_v2_dataset(tmp_path / name, small_users(), small_items(), SMALL_KINDS)
    medians = bench_datasets.run([str(tmp_path / "a"), str(tmp_path / "b"), "--steps", "1",
                                  "--warmup", "0", "--device", "cpu", "--sparse_embeddings",
                                  "--batch_size", "2", "--maxlen", "4"])
    assert set(medians) == {str(tmp_path / "a"), str(tmp_path / "b")}
    assert all(t > 0 for t in medians.values())
