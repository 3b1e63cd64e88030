"""layouts/mm.py (multimodal sources of both layouts -> float16 memmap) and inputs/host_tables.py (the
per-batch host gather), on tiny generated tables."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dataset import DataError
from inputs.host_tables import HostTables, random_access
from layouts import mm
from model import BaseModel

ITEMS = 12
OIDS = {20_000_000_000 + 7 * r: r for r in range(1, ITEMS + 1)}  # item OID -> RID, as indexer['i']


def _vectors(dim: int, oids, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {o: rng.standard_normal(dim).astype(np.float32) for o in oids}


def _write_parquet(folder, vecs: dict, emb_type=pa.list_(pa.float64()), cid_str=True, parts=2):
    folder.mkdir(parents=True)
    items = list(vecs.items())
    for p in range(parts):
        chunk = items[p::parts]
        cids = [str(o) if cid_str else o for o, _ in chunk]
        embs = [None if v is None else [float(x) for x in v] for _, v in chunk]
        if pa.types.is_string(emb_type):
            embs = [None if e is None else json.dumps(e) for e in embs]
        table = pa.table({"anonymous_cid": pa.array(cids, pa.string() if cid_str else pa.int64()),
                          "emb": pa.array(embs, emb_type)})
        pq.write_table(table, folder / f"part-{p:05d}-x.parquet", row_group_size=3)


def _expected(vecs: dict, dim: int) -> np.ndarray:
    """The reference: a dict lookup per RID, zeros where an item has no vector."""
    want = np.zeros((ITEMS + 1, dim), np.float32)
    for oid, v in vecs.items():
        if oid in OIDS and v is not None:
            want[OIDS[oid]] = v
    return want


def _convert(data_dir, fid="81", on_bad_record="error", oids=OIDS):
    out = data_dir / "cache" / f"mm_{fid}.npy"
    info = mm.convert_mm_table(data_dir, fid, oids, ITEMS, out, on_bad_record)
    return mm.open_mm_table(out), info


@pytest.mark.parametrize("emb_type", [pa.list_(pa.float64()), pa.list_(pa.float32()),
                                      pa.large_list(pa.float64()), pa.string()])
@pytest.mark.parametrize("cid_str", [True, False])
def test_parquet_table_equals_dict_lookup(tmp_path, emb_type, cid_str):
    dim = 8
    vecs = _vectors(dim, list(OIDS)[:9])  # items 10..12 have no vector
    vecs[99] = np.ones(dim, np.float32)  # a creative that is no item (an unseen candidate)
    vecs[list(OIDS)[0]] = None  # a null vector: no vector
    _write_parquet(tmp_path / "mm_emb" / f"emb_81_{dim}_parquet", vecs, emb_type, cid_str)
    table, info = _convert(tmp_path)
    assert table.dtype == np.float16 and table.shape == (ITEMS + 1, dim)
    np.testing.assert_array_equal(table, _expected(vecs, dim).astype(np.float16))
    assert info.covered == 8 and info.unmapped == 1 and info.bad_skipped == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["mm_81.npy"]


def test_v1_pickle_and_jsonlines_equal_dict_lookup(tmp_path):
    dim = 4
    vecs = _vectors(dim, list(OIDS)[2:], seed=1)
    (tmp_path / "a" / "creative_emb").mkdir(parents=True)
    (tmp_path / "a" / "creative_emb" / f"emb_82_{dim}.pkl").write_bytes(pickle.dumps(vecs))
    folder = tmp_path / "b" / "creative_emb" / f"emb_82_{dim}"
    folder.mkdir(parents=True)
    lines = [json.dumps({"anonymous_cid": str(o), "emb": v.tolist()}) for o, v in vecs.items()]
    (folder / "part-00000").write_text("\n".join(lines[:5]) + "\n")
    (folder / "more.json").write_text("\n".join(lines[5:]) + "\n")
    want = _expected(vecs, dim).astype(np.float16)
    for d in (tmp_path / "a", tmp_path / "b"):
        table, info = _convert(d, "82")
        np.testing.assert_array_equal(table, want)
        assert info.covered == ITEMS - 2


def test_string_keyed_indexer(tmp_path):
    """OIDs normalised: an indexer keyed by strings finds V2's string and int creative ids."""
    vecs = _vectors(4, list(OIDS)[:3])
    _write_parquet(tmp_path / "mm_emb" / "emb_83_4_parquet", vecs, cid_str=False, parts=1)
    table, info = _convert(tmp_path, "83", oids={str(o): r for o, r in OIDS.items()})
    np.testing.assert_array_equal(table, _expected(vecs, 4).astype(np.float16))
    assert info.covered == 3


def test_name_dimension_disagrees_with_vectors(tmp_path):
    _write_parquet(tmp_path / "mm_emb" / "emb_84_32_parquet", _vectors(16, list(OIDS)[:4]))
    with pytest.raises(DataError, match=r"emb_84_32_parquet.*row 0.*dimension 16.*says dimension 32"):
        _convert(tmp_path, "84")
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written


def test_one_vector_of_wrong_length_is_a_bad_record(tmp_path):
    vecs = _vectors(8, list(OIDS)[:4])
    vecs[list(OIDS)[2]] = np.ones(5, np.float32)
    _write_parquet(tmp_path / "mm_emb" / "emb_81_8_parquet", vecs, parts=1)
    with pytest.raises(DataError, match=r"part-00000-x.parquet: row 2: creative .*dimension 8, got shape \(5,\)"):
        _convert(tmp_path)
    table, info = _convert(tmp_path, on_bad_record="skip")
    assert info.bad_skipped == 1 and info.covered == 3 and not table[3].any()


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf, 1e6])
def test_non_finite_vector(tmp_path, bad_value):
    """NaN / inf (or beyond float16's range) -> error naming file and row; skip: no vector."""
    vecs = _vectors(8, list(OIDS)[:6])
    vecs[list(OIDS)[4]][3] = bad_value
    _write_parquet(tmp_path / "mm_emb" / "emb_81_8_parquet", vecs, parts=1)
    with pytest.raises(DataError, match=r"part-00000-x.parquet: row 4: creative '\d+'"):
        _convert(tmp_path)
    table, info = _convert(tmp_path, on_bad_record="skip")
    assert info.bad_skipped == 1 and info.covered == 5
    assert not table[5].any() and table[4].any()


def test_non_finite_in_pickle_names_the_key(tmp_path):
    vecs = _vectors(4, list(OIDS)[:3])
    vecs[list(OIDS)[1]][0] = np.nan
    (tmp_path / "creative_emb").mkdir()
    (tmp_path / "creative_emb" / "emb_81_4.pkl").write_bytes(pickle.dumps(vecs))
    with pytest.raises(DataError, match=rf"emb_81_4.pkl: key {list(OIDS)[1]}.*NaN or infinite"):
        _convert(tmp_path)


def test_two_sources_for_one_feature_are_ambiguous(tmp_path):
    _write_parquet(tmp_path / "mm_emb" / "emb_81_4_parquet", _vectors(4, list(OIDS)[:2]))
    (tmp_path / "creative_emb").mkdir()
    (tmp_path / "creative_emb" / "emb_81_4.pkl").write_bytes(pickle.dumps({}))
    with pytest.raises(DataError, match=r"feature 81 has 2 sources.*ambiguous"):
        _convert(tmp_path)
    with pytest.raises(DataError, match="no creative_emb.*mm_emb/emb_85"):
        _convert(tmp_path, "85")


def test_corrupt_parquet_part(tmp_path):
    folder = tmp_path / "mm_emb" / "emb_81_4_parquet"
    _write_parquet(folder, _vectors(4, list(OIDS)), parts=1)
    part = next(folder.iterdir())
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(DataError, match=r"part-00000-x.parquet: not a readable parquet file"):
        _convert(tmp_path)


# --------------------------------------------------------------------------- the host gather

def test_host_gather_equals_indexing(tmp_path):
    """A memory-mapped .npy table (the cache's) and an in-memory one give the rows of the ids,
    each distinct id once; the map is read in place, not copied into memory."""
    table = np.arange(40, dtype=np.float16).reshape(10, 4)
    np.save(tmp_path / "t.npy", table)
    ids = np.array([[3, 0, 3], [9, 1, 0]])
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    for host in (HostTables({"81": mapped}), HostTables({"81": table.copy()})):
        uniq, (rows,) = host.gather(ids, "cpu")
        assert uniq.tolist() == [0, 1, 3, 9] and rows.shape == (4, 4)  # each distinct id once
        np.testing.assert_array_equal(rows.numpy(), table[uniq.numpy()])
    source = HostTables({"81": mapped})._sources["81"]
    assert source.data_ptr() == mapped.ctypes.data  # a view of the map
    assert HostTables({}).gather(ids, "cpu") is None
    with pytest.raises(TypeError, match="float16/32/64"):
        HostTables({"81": np.zeros((3, 2), np.int32)})
    # read-around stays on while the table fits in half the memory
    assert not random_access(8 << 30, 24 << 30) and random_access(13 << 30, 24 << 30)


def _schema(dim: int) -> dict:
    return {"user_sparse": [], "user_array": [], "user_continual": [], "item_sparse": ["100"],
            "item_array": [], "item_continual": [], "vocab": {"100": 5}, "mm_dims": {"81": dim}}


def _tables(items: int, users: int, dim: int) -> dict:
    rng = np.random.default_rng(3)
    mm_table = rng.standard_normal((items + 1, dim)).astype(np.float16)
    mm_table[0] = 0
    sparse = rng.integers(1, 6, (items + 1, 1)).astype(np.int32)
    sparse[0] = 0
    return {"item_sparse": torch.from_numpy(sparse),
            "item_array": torch.zeros(items + 1, 0, 1, dtype=torch.int32),
            "item_continual": torch.zeros(items + 1, 0),
            "user_sparse": torch.zeros(users + 1, 0, dtype=torch.int32),
            "user_array": torch.zeros(users + 1, 0, 1, dtype=torch.int32),
            "user_continual": torch.zeros(users + 1, 0), "mm_81": mm_table}


def _buffer_items(model, ids):
    """The old path: the whole table a float32 buffer, indexed by every lookup."""
    f = model.features
    table = torch.from_numpy(np.asarray(f.host_mm.tables["81"], np.float32))
    parts = [f.item_emb(ids), f.sparse_emb["100"](f.item_sparse[ids, 0]),
             f.emb_transform["81"](table[ids])]
    return torch.relu(f.itemdnn(torch.cat(parts, -1)))


@pytest.mark.parametrize("items", [40, 5000])  # whole-catalogue path, per-token path
def test_model_with_host_gather_equals_buffer_path(items):
    users, dim, b, n = 7, 6, 3, 9
    torch.manual_seed(0)
    model = BaseModel(_schema(dim), _tables(items, users, dim), items, users, hidden_units=8,
                      dropout_rate=0.0, maxlen=n - 1).eval()
    gen = torch.Generator().manual_seed(1)
    seq = torch.randint(1, items + 1, (b, n), generator=gen)
    seq[:, :2] = 0
    token_type = (seq > 0).long()
    token_type[:, 2] = 2
    seq[:, 2] = torch.arange(1, b + 1)
    pos = torch.randint(0, items + 1, (b, n), generator=gen)
    neg = torch.randint(1, items + 1, (b, n), generator=gen)
    host = {"seq": seq.numpy(), "token_type": token_type.numpy(), "pos": pos.numpy(),
            "neg": neg.numpy()}
    item_mm = model.host_item_mm(host)
    assert (item_mm is None) == (items == 40)
    got_pos, got_neg = model(seq, token_type, pos, neg, item_mm=item_mm)
    fallback_pos, _ = model(seq, token_type, pos, neg)  # gathered inside forward
    feats = model.log2feats(seq, token_type, _buffer_items(model, seq * (token_type == 1)))
    want_pos = (feats * _buffer_items(model, pos)).sum(-1)
    want_neg = (feats * _buffer_items(model, neg)).sum(-1)
    torch.testing.assert_close(got_pos, want_pos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_neg, want_neg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fallback_pos, want_pos, rtol=1e-5, atol=1e-6)
    ids = torch.arange(items + 1)
    torch.testing.assert_close(model.embed_items(ids), _buffer_items(model, ids), rtol=1e-5, atol=1e-6)
    # a softmax loss looks up (inputs, pos) and shared candidates, not neg: the rows the host
    # gathered for the whole batch (a superset) give the same vectors
    cand = torch.tensor([5, 1, items, 17])
    item_mm = model.host_item_mm({**host, "cand": cand.numpy()})
    feats, pos_v, neg_v, cand_v = model(seq, token_type, pos, None, cand, vectors=True,
                                        item_mm=item_mm)
    assert neg_v is None
    torch.testing.assert_close(pos_v, _buffer_items(model, pos), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cand_v, _buffer_items(model, cand), rtol=1e-5, atol=1e-6)


def test_load_dataset_caches_the_converted_table(small_v1, tmp_path):
    """Both layouts' folders are read for a V1 directory; the table is converted once, moved
    into the parse cache (no scratch left), and memory-mapped from there on the next load."""
    from dataset import load_dataset
    from layouts import safe_pickle
    oids = safe_pickle.load(small_v1 / "indexer.pkl")["i"]
    vecs = _vectors(8, [9001, 9003])
    _write_parquet(small_v1 / "mm_emb" / "emb_82_8_parquet", vecs, parts=1)
    cache = tmp_path / "cache"
    first = load_dataset(small_v1, cache, mm_emb_ids=["81", "82"])
    (entry,) = cache.iterdir()
    assert str(first.tables.mm["82"].filename) == str(entry / "mm_82.npy")  # mapped where it lives
    assert sorted(p.name for p in entry.glob("mm_*")) == ["mm_81.npy", "mm_82.npy"]
    second = load_dataset(small_v1, cache, mm_emb_ids=["81", "82"])
    for data in (first, second):
        t = data.tables.mm["82"]
        assert isinstance(t, np.memmap) and t.dtype == np.float16
        for oid, v in vecs.items():
            np.testing.assert_array_equal(t[oids[oid]], v.astype(np.float16))
        assert not t[[r for o, r in oids.items() if o not in vecs]].any()


def test_input_worker_gathers_the_multimodal_rows_ahead_of_the_step():
    """step.host_inputs runs in the prefetch worker: the rows it gathers there are the ones the
    loop would gather inline, and the loop only moves them (to_device)."""
    import threading

    from training import step
    from inputs.input_pipeline import prefetch
    items, users, dim, b, n = 5000, 7, 6, 3, 9
    model = BaseModel(_schema(dim), _tables(items, users, dim), items, users, hidden_units=8,
                      dropout_rate=0.0, maxlen=n - 1).eval()
    gen = np.random.default_rng(4)
    batches = [{"seq": gen.integers(1, items + 1, (b, n)), "token_type": np.ones((b, n), np.int64),
                "pos": gen.integers(0, items + 1, (b, n)), "neg": gen.integers(1, items + 1, (b, n))}
               for _ in range(4)]
    threads = []

    def prepare(batch):
        threads.append(threading.current_thread().name)
        return step.host_inputs(model, batch, pin=False)

    ahead = list(prefetch(batches, 1, prepare=prepare))
    assert threads == ["input-prefetch"] * 4
    for batch, inputs in zip(batches, ahead):
        want_ids, want_rows = model.host_item_mm(batch)
        got = step.to_device(inputs, torch.device("cpu"))
        got_ids, got_rows = got["item_mm"]
        torch.testing.assert_close(got_ids, want_ids, rtol=0, atol=0)
        torch.testing.assert_close(got_rows[0], want_rows[0], rtol=0, atol=0)
        assert got_ids.tolist() == sorted(set(np.concatenate(
            [batch[k].ravel() for k in ("seq", "pos", "neg")]).tolist()))
        torch.testing.assert_close(got["seq"], torch.from_numpy(batch["seq"]), rtol=0, atol=0)
        with torch.no_grad():  # the gathered rows serve forward as the inline path does
            torch.testing.assert_close(model(got["seq"], got["token_type"], got["pos"], got["neg"],
                                             item_mm=got["item_mm"])[0],
                                       model(got["seq"], got["token_type"], got["pos"],
                                             got["neg"])[0])


def test_with_a_separate_output_embedding_only_the_input_items_rows_are_gathered():
    """pos and neg are scored from output_emb, so their multimodal rows are not needed."""
    items, users, dim, b, n = 5000, 7, 6, 3, 9
    model = BaseModel(_schema(dim), _tables(items, users, dim), items, users, hidden_units=8,
                      dropout_rate=0.0, maxlen=n - 1, output_embedding="separate").eval()
    gen = np.random.default_rng(5)
    batch = {"seq": gen.integers(1, items + 1, (b, n)), "token_type": np.ones((b, n), np.int64),
             "pos": gen.integers(1, items + 1, (b, n)), "neg": gen.integers(1, items + 1, (b, n))}
    batch["token_type"][0, 0], batch["seq"][0, 0] = 2, 3  # a user token: user 3, no item
    ids, rows = model.host_item_mm(batch)
    inputs = batch["seq"] * (batch["token_type"] == 1)
    assert ids.tolist() == sorted(set(inputs.ravel().tolist()))
    assert len(rows[0]) == len(ids)
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(t["seq"], t["token_type"], t["pos"], t["neg"],
                                         item_mm=(ids, rows))[0],
                                   model(t["seq"], t["token_type"], t["pos"], t["neg"])[0])
