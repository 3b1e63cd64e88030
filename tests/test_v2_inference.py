"""V2 inference: candidate/ in both schemas (null and cold structs), infer.py end to end on a V2
directory, --exclude_seen against a reference, --official_result."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pytest

import infer
import main
from evaluation import seen
from conftest import SMALL_KINDS, small_items, small_users
from dataset import BadRecords, SequenceData
from layouts import inference_v2
from layouts.write_v2 import write_v2_dataset


def run_infer(argv: list[str]) -> dict:
    """infer.main with its top-10s as lists (it returns a (users, k) array), as in the JSON."""
    result = infer.main(argv)
    assert isinstance(result["top10s"], np.ndarray) and result["top10s"].ndim == 2
    return {"users": result["users"], "top10s": result["top10s"].tolist()}


# --------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("flag", ["cold_start", "is_str"])
def test_decode_feature_structs_by_hand(flag):
    struct = pa.struct([(flag, pa.int64()), ("feature_value", pa.string())])
    col = pa.array([{flag: 0, "feature_value": "4"},      # a RID -> 4
                    None,                                  # null struct -> 0
                    {flag: 1, "feature_value": "999"},    # cold -> 0 (counted)
                    {flag: 0, "feature_value": None},     # null value -> 0
                    {flag: 0, "feature_value": "abc"},    # not a number -> 0 (counted)
                    {flag: 0, "feature_value": "11"},     # outside the vocabulary -> 0 (counted)
                    {flag: None, "feature_value": "10"}],  # flag null: not cold -> 10
                   struct)
    cold = BadRecords("skip")
    got = inference_v2.decode_feature(col, 10, cold, "here")
    assert got.tolist() == [4, 0, 0, 0, 0, 0, 10] and cold.count == 3


def test_decode_feature_rejects_other_types():
    with pytest.raises(inference_v2.ds.DataError, match="here: type string"):
        inference_v2.decode_feature(pa.array(["4"]), 10, BadRecords("skip"), "here")


# --------------------------------------------------------------------------- end to end

def candidates():
    """Every catalogue item (one with an unseen value, one with a null feature) + 2 unseen OIDs."""
    rows = [{"creative_id": cid, "retrieval_id": 100 + k, "features": dict(f)}
            for k, (cid, f) in enumerate(small_items().items())]
    rows[0]["features"]["201"] = "brand-new"   # cold value -> 0
    rows[1]["features"]["200"] = None          # null struct -> 0
    rows += [{"creative_id": 5550001, "retrieval_id": 7, "features": {"200": "shoes"}},
             {"creative_id": 5550002, "retrieval_id": 8, "features": {"200": "never"}}]
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2infer")
    dirs = {}
    for schema in ("public", "official"):
        dirs[schema] = root / schema
        write_v2_dataset(dirs[schema], small_users(), small_items(), SMALL_KINDS,
                         candidates=candidates(), candidate_schema=schema)
    main.main(["--data_dir", str(dirs["public"]), "--num_epochs", "1", "--device", "cpu",
               "--log_dir", str(root / "log"), "--tb_dir", str(root / "tb"),
               "--ckpt_dir", str(root / "ckpt"), "--cache_dir", str(root / "c"),
               "--maxlen", "8", "--batch_size", "4"])
    (ckpt,) = list((root / "ckpt").iterdir())
    return root, dirs, ckpt


def run(root, data_dir, ckpt, name, *extra):
    out = root / name / "top10.json"
    result = run_infer(["--eval_data_dir", str(data_dir), "--state_dict_path", str(ckpt),
                         "--output", str(out), "--device", "cpu", "--topk", "3", *extra])
    assert json.loads(out.read_text()) == result
    return result


def test_both_candidate_schemas_read_the_same(trained):
    root, dirs, ckpt = trained
    data = {s: inference_v2.load_inference(dirs[s]) for s in dirs}
    a, b = data["public"], data["official"]
    np.testing.assert_array_equal(a.cand_creative_ids, b.cand_creative_ids)
    np.testing.assert_array_equal(a.cand_retrieval_ids, b.cand_retrieval_ids)
    np.testing.assert_array_equal(a.tables.item_sparse, b.tables.item_sparse)
    rows, itemnum = a.cand_rows, a.itemnum
    # seen candidates embed as their item, unseen ones as 0 with their own features
    assert a.item_emb_id[rows].tolist() == [1, 2, 3, 4, 5, 6, 0, 0]
    sparse = a.tables.item_sparse
    np.testing.assert_array_equal(sparse[rows[2:6]], sparse[3:7])  # own features = training's
    assert sparse[rows[0]].tolist() == [sparse[1, 0], 0]  # unseen value of 201 -> 0
    assert sparse[rows[1]].tolist() == [0, sparse[2, 1]]  # null struct of 200 -> 0
    assert sparse[rows[6]].tolist() == [sparse[1, 0], 0] and sparse[rows[7]].tolist() == [0, 0]
    assert a.stats["cold_candidates"] == 2 and a.stats["cold_feature_values"] == 2
    assert len(sparse) == itemnum + 1 + len(rows)
    assert a.users == ["alice", "bob", "carol", "dave"]  # every seq user, raw ids


def test_infer_writes_top_k_creative_ids_and_official_result(trained):
    root, dirs, ckpt = trained
    results = {s: run(root, dirs[s], ckpt, s, "--official_result", str(root / f"off_{s}"))
               for s in dirs}
    assert results["public"] == results["official"]
    r = results["public"]
    oids = {c["creative_id"] for c in candidates()}
    assert r["users"] == ["alice", "bob", "carol", "dave"]
    assert all(len(t) == 3 and len(set(t)) == 3 and set(t) <= oids for t in r["top10s"])
    official = json.loads((root / "off_public" / "result.json").read_text())
    assert official["user"] == r["users"] and official["top10s"] == r["top10s"]
    assert isinstance(official["time"], int)


@pytest.mark.parametrize("topk,path", [(3, "masked inside the top-k"),
                                       (None, "dropping them after")])
def test_exclude_seen_removes_the_history(trained, caplog, topk, path):
    # a small k is masked inside the exact top-k; k = every candidate leaves some user fewer
    # than k unseen ones, so the top k + extra is searched and the seen ones go last
    root, dirs, ckpt = trained
    topk = topk or len(inference_v2.load_inference(dirs["public"]).cand_rows)
    kept = run(root, dirs["public"], ckpt, "all", "--no-exclude_seen", "--topk", str(topk + 8))
    with caplog.at_level(logging.INFO, logger="infer"):
        got = run(root, dirs["public"], ckpt, f"new{topk}", "--topk", str(topk))
    assert path in caplog.text
    history = {u.raw_user_id: {e[0] for e in u.events} for u in small_users()}
    for user, full, top in zip(kept["users"], kept["top10s"], got["top10s"]):
        seen_last = ([c for c in full if c not in history[user]]
                     + [c for c in full if c in history[user]])
        assert top == seen_last[:topk]


# --------------------------------------------------------------------------- evaluation/seen.py

def reference_drop_seen(top, seen_sets, k):
    out = []
    for row, s in zip(top.tolist(), seen_sets):
        out.append(([c for c in row if c not in s] + [c for c in row if c in s])[:k])
    return out


def test_drop_seen_equals_reference():
    rng = np.random.default_rng(0)
    n_lines, n_cand, k = 30, 40, 5
    # lines of items 1..50; candidates are items 1..40 (emb id = item), plus nothing unseen
    lens = rng.integers(0, 20, n_lines)
    tok = rng.integers(1, 51, int(lens.sum()))
    seqs = SequenceData(tok_id=tok, tok_type=np.ones(len(tok), np.int8),
                        tok_action=np.zeros(len(tok), np.int8),
                        line_offsets=np.concatenate([[0], np.cumsum(lens)]),
                        line_user=np.arange(1, n_lines + 1), has_profile=np.zeros(n_lines, bool))
    item_emb_id = np.concatenate([np.arange(51), np.arange(1, n_cand + 1)])
    cand_rows = np.arange(51, 51 + n_cand)
    pairs = seen.seen_candidates(seqs, item_emb_id, cand_rows)
    off = seqs.line_offsets
    seen_sets = [{int(i) - 1 for i in tok[off[u]:off[u + 1]] if i <= n_cand}
                 for u in range(n_lines)]
    assert sorted(map(tuple, pairs.tolist())) == sorted((u, c) for u in range(n_lines)
                                                        for c in seen_sets[u])
    extra = seen.extra_k(pairs, n_lines)
    assert extra == max(len(s) for s in seen_sets)
    top = np.stack([rng.permutation(n_cand)[:k + extra] for _ in range(n_lines)])
    assert seen.drop_seen(top, pairs, n_cand, k).tolist() == reference_drop_seen(top, seen_sets, k)
