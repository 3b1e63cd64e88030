"""The V1 writer and the demo generator, checked by reading files back with plain json/pickle."""

from __future__ import annotations

import collections
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from demo_data import FEATURE_KINDS as DEMO_KINDS
from demo_data import write_demo_dataset, write_demo_inference_dir
from layouts import safe_pickle
from layouts.write_v1 import UserHistory, write_inference_dir, write_v1_dataset

KINDS = {
    "100": "item_sparse",
    "102": "item_array",
    "103": "item_continual",
    "104": "user_sparse",
    "106": "user_array",
    "107": "user_continual",
}
ITEMS = {
    5001: {"100": "shoes", "102": ["red", "sale"], "103": 1},  # int 1 must be written as 1.0
    5002: {"100": "hats", "102": ["blue"], "103": 2.5},
    5003: {"100": "shoes", "103": None},  # None and a missing key both mean "missing"
}


def tiny_users() -> list[UserHistory]:
    return [
        UserHistory(
            "alice",
            {"104": "F", "106": [3, 7], "107": 0.5},
            [(5002, 0, 100), (5001, 1, 105), (5003, None, 110)],
        ),
        UserHistory(
            "bob", {"104": "M", "106": [7]}, [(5001, 1, 200), (5009, 0, 201)], profile_position="first"
        ),
        UserHistory(42, None, [(5003, 1, 300)]),  # no profile record
    ]


def read_dir(path: Path) -> dict:
    """Everything in a training directory, read with json/pickle only (no project code)."""
    raw = (path / "seq.jsonl").read_bytes()
    with open(path / "seq_offsets.pkl", "rb") as f:
        offsets = pickle.load(f)
    with open(path / "indexer.pkl", "rb") as f:
        indexer = pickle.load(f)
    return {
        "raw": raw,
        "offsets": offsets,
        "lines": [json.loads(line) for line in raw.decode().splitlines()],
        "indexer": indexer,
        "items": json.loads((path / "item_feat_dict.json").read_text()),
        "schema": json.loads((path / "schema.json").read_text()),
    }


def test_round_trip(tmp_path):
    summary = write_v1_dataset(tmp_path / "d", tiny_users(), ITEMS, KINDS)
    d = read_dir(tmp_path / "d")
    assert summary["num_users"] == 3 and summary["num_items"] == 4 and summary["num_item_records"] == 6

    # Offsets: one per line, each at a line start, and json.loads of a seek-and-readline works.
    assert d["offsets"][0] == 0 and len(d["offsets"]) == 3
    with open(tmp_path / "d" / "seq.jsonl", "rb") as f:
        for off, line in zip(d["offsets"], d["lines"]):
            assert off == 0 or d["raw"][off - 1 : off] == b"\n"
            f.seek(off)
            assert json.loads(f.readline()) == line

    idx = d["indexer"]
    assert type(idx["f"]) is collections.defaultdict and idx["f"].default_factory is dict
    assert idx["u"] == {"alice": 1, "bob": 2, 42: 3}
    assert idx["i"] == {5001: 1, 5002: 2, 5003: 3, 5009: 4}  # catalogue order, then first seen
    assert idx["f"]["100"] == {"shoes": 1, "hats": 2}
    assert idx["f"]["102"] == {"red": 1, "sale": 2, "blue": 3}
    assert idx["f"]["104"] == {"F": 1, "M": 2} and idx["f"]["106"] == {3: 1, 7: 2}
    assert "103" not in idx["f"] and "107" not in idx["f"]  # continual features have no vocabulary

    alice, bob, anon = d["lines"]
    assert alice[:3] == [
        [1, 2, None, {"100": 2, "102": [3], "103": 2.5}, 0, 100],
        [1, 1, None, {"100": 1, "102": [1, 2], "103": 1.0}, 1, 105],
        [1, 3, None, {"100": 1}, None, 110],
    ]
    assert alice[3] == [1, None, {"104": 1, "106": [1, 2], "107": 0.5}, None, None, 110]  # profile last
    assert bob[0] == [2, None, {"104": 2, "106": [2]}, None, None, 200]  # profile first
    assert bob[2] == [2, 4, None, {}, 0, 201]  # item outside the catalogue: no features
    assert anon == [[3, 3, None, {"100": 1}, 1, 300]]
    assert b'"103":1.0' in d["raw"] and b'"103":1,' not in d["raw"]  # a float the reader can tell

    assert d["items"] == {
        "1": {"100": 1, "102": [1, 2], "103": 1.0},
        "2": {"100": 2, "102": [3], "103": 2.5},
        "3": {"100": 1},
        "4": {},
    }
    assert '"103":1.0' in (tmp_path / "d" / "item_feat_dict.json").read_text()
    assert d["schema"] == {
        "user_sparse": ["104"], "user_array": ["106"], "user_continual": ["107"],
        "item_sparse": ["100"], "item_array": ["102"], "item_continual": ["103"], "mm_emb_ids": [],
    }  # fmt: skip
    assert not (tmp_path / "d" / "creative_emb").exists()
    assert sorted(os.listdir(tmp_path)) == ["d"]  # no temp dir left


def test_creative_emb_pkl_and_jsonl(tmp_path):
    rng = np.random.default_rng(0)
    vecs = {cid: rng.normal(size=32).astype(np.float32) for cid in (5001, 5002, 5003)}
    big = {np.int64(5001): rng.normal(size=4)}  # numpy keys and float64 values are normalised
    mm = {"81": vecs, "82": big}

    write_v1_dataset(tmp_path / "p", tiny_users(), ITEMS, KINDS, mm, mm_format="pkl")
    with open(tmp_path / "p" / "creative_emb" / "emb_81_32.pkl", "rb") as f:
        table = pickle.load(f)
    assert set(table) == {5001, 5002, 5003} and all(type(k) is int for k in table)
    assert all(
        v.dtype == np.float32 and v.shape == (32,) and np.array_equal(v, vecs[k]) for k, v in table.items()
    )
    assert (tmp_path / "p" / "creative_emb" / "emb_82_4.pkl").is_file()
    assert safe_pickle.load(tmp_path / "p" / "creative_emb" / "emb_81_32.pkl").keys() == table.keys()
    assert json.loads((tmp_path / "p" / "schema.json").read_text())["mm_emb_ids"] == ["81", "82"]

    write_v1_dataset(tmp_path / "j", tiny_users(), ITEMS, KINDS, mm, mm_format="jsonl")
    folder = tmp_path / "j" / "creative_emb" / "emb_81_32"
    names = sorted(os.listdir(folder))
    assert "part-00000" in names and any(n.endswith(".json") for n in names)  # both names in use
    rows = [json.loads(line) for n in names for line in (folder / n).read_text().splitlines()]
    assert sorted(r["anonymous_cid"] for r in rows) == [5001, 5002, 5003]
    for r in rows:
        assert np.array_equal(np.asarray(r["emb"], dtype=np.float32), vecs[r["anonymous_cid"]])
    assert os.listdir(tmp_path / "j" / "creative_emb" / "emb_82_4") == ["part-00000"]  # one row, one file


def test_atomic_write_and_overwrite(tmp_path):
    def failing_users():
        yield tiny_users()[0]
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_v1_dataset(tmp_path / "d", failing_users(), ITEMS, KINDS)
    assert os.listdir(tmp_path) == []  # neither the dataset nor its temp dir

    write_v1_dataset(tmp_path / "d", tiny_users()[:1], ITEMS, KINDS)
    with pytest.raises(FileExistsError):
        write_v1_dataset(tmp_path / "d", tiny_users(), ITEMS, KINDS)
    write_v1_dataset(tmp_path / "d", tiny_users(), ITEMS, KINDS, overwrite=True)
    assert len(read_dir(tmp_path / "d")["lines"]) == 3
    assert os.listdir(tmp_path) == ["d"]


@pytest.mark.parametrize(
    "users, items, kinds, message",
    [
        (tiny_users(), ITEMS, {**KINDS, "100": "item_dense"}, "unknown feature kinds"),
        (tiny_users(), ITEMS, {k: v for k, v in KINDS.items() if k != "104"}, "has no kind"),
        ([UserHistory("u", {"100": "x"}, [])], {}, KINDS, "item_sparse but was given as a user"),
        ([UserHistory("u", None, []), UserHistory("u", None, [])], {}, KINDS, "appears twice"),
        ([UserHistory("u", None, [(1, 0, 5), (2, 0, 4)])], {}, KINDS, "ascending"),
        ([UserHistory("u", {"107": float("nan")}, [])], {}, KINDS, "finite"),
        ([UserHistory("u", None, [], profile_position="middle")], {}, KINDS, "profile_position"),
    ],
)
def test_writer_rejects_bad_input(tmp_path, users, items, kinds, message):
    with pytest.raises(ValueError, match=message):
        write_v1_dataset(tmp_path / "d", users, items, kinds)
    assert os.listdir(tmp_path) == []


def test_inference_dir_maps_through_training_indexer(tmp_path):
    mm = {"81": {5001: np.ones(32, np.float32)}}
    write_v1_dataset(tmp_path / "train", tiny_users(), ITEMS, KINDS, mm)
    users = [
        UserHistory("bob", {"104": "M", "106": [7, 99]}, [(5002, 1, 10), (7777, 0, 11), (7777, 1, 12)]),
        UserHistory("carol", {"104": "X"}, [(8888, 1, 20)]),  # cold user with an unseen value
    ]
    cold_features = {7777: {"100": "hats", "102": ["blue", "neon"]}}
    candidates = [
        {"creative_id": 5001, "retrieval_id": 11, "features": {"100": "shoes", "103": 3}},
        {"creative_id": 7777, "retrieval_id": 12, "features": cold_features[7777]},
    ]
    summary = write_inference_dir(
        tmp_path / "inf", tmp_path / "train", users, candidates, item_features=cold_features
    )
    inf = tmp_path / "inf"
    for name in ("indexer.pkl", "item_feat_dict.json", "schema.json", "creative_emb/emb_81_32.pkl"):
        assert (inf / name).read_bytes() == (tmp_path / "train" / name).read_bytes()
    raw = (inf / "predict_seq.jsonl").read_bytes()
    with open(inf / "predict_seq_offsets.pkl", "rb") as f:
        offsets = pickle.load(f)
    assert offsets == [0, raw.index(b"\n") + 1]
    bob, carol = (json.loads(line) for line in raw.decode().splitlines())
    assert bob == [
        [2, 2, None, {"100": 2, "102": [3], "103": 2.5}, 1, 10],  # training reids and features
        [2, 5, None, {"100": 2, "102": [3, "neon"]}, 0, 11],  # cold item: id above the 4 trained
        [2, 5, None, {"100": 2, "102": [3, "neon"]}, 1, 12],  # same cold item, same id
        [2, None, {"104": 2, "106": [2, "99"]}, None, None, 12],  # unseen value as a string
    ]
    assert carol == [["carol", 6, None, {}, 1, 20], ["carol", None, {"104": "X"}, None, None, 20]]
    rows = [json.loads(line) for line in (inf / "predict_set.jsonl").read_text().splitlines()]
    assert rows == [
        {"creative_id": 5001, "retrieval_id": 11, "features": {"100": 1, "103": 3.0}},
        {"creative_id": 7777, "retrieval_id": 12, "features": {"100": 2, "102": [3, "neon"]}},
    ]
    assert summary["cold_items"] == 2 and summary["num_candidates"] == 2 and summary["cold_candidates"] == 1


# ---------------------------------------------------------------------------------------------
# Demo data


def test_demo_is_deterministic(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_demo_dataset(tmp_path / name, num_users=150, num_items=300, seed=seed)
    for name in ("seq.jsonl", "item_feat_dict.json", "indexer.pkl", "creative_emb/emb_81_32.pkl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "seq.jsonl").read_bytes() != (tmp_path / "c" / "seq.jsonl").read_bytes()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "train"
    t0 = time.perf_counter()
    write_demo_dataset(out)
    assert time.perf_counter() - t0 < 10  # about 0.6 s on a laptop core; generous for slow CI
    return out


def test_demo_properties(demo_dir):
    d = read_dir(demo_dir)
    idx = d["indexer"]
    assert len(d["lines"]) == len(idx["u"]) == 3000 and len(idx["i"]) == len(d["items"]) == 2000
    assert d["schema"]["mm_emb_ids"] == ["81"]
    assert {
        fid: kind for kind, fids in d["schema"].items() if kind != "mm_emb_ids" for fid in fids
    } == DEMO_KINDS
    actions, positions, lengths = collections.Counter(), collections.Counter(), []
    successor = {}  # item -> next items seen after it
    for line in d["lines"]:
        profiles = [k for k, r in enumerate(line) if r[1] is None]
        assert len(profiles) == 1 and set(line[profiles[0]][2]) <= {"104", "105", "106", "107"}
        positions["first" if profiles[0] == 0 else "last" if profiles[0] == len(line) - 1 else "mid"] += 1
        items = [r for r in line if r[1] is not None]
        ids = [r[1] for r in items]
        lengths.append(len(ids))
        assert len(set(ids)) == len(ids)  # no repeated item within a user
        assert [r[5] for r in line] == sorted(r[5] for r in line)
        assert all(r[3] == d["items"][str(r[1])] for r in items)
        actions.update(r[4] for r in items)
        for a, b in zip(ids, ids[1:]):
            successor.setdefault(a, collections.Counter())[b] += 1
    assert min(lengths) >= 5 and max(lengths) <= 80 and 15 < np.mean(lengths) < 40
    assert positions["mid"] == 0 and positions["first"] > 0 and positions["last"] > positions["first"]
    total = sum(actions.values())
    assert 0.003 < actions[None] / total < 0.02 and actions[0] > actions[1] > 0.1 * total
    # Sequential signal: the most frequent next item of an item is its fixed successor.
    top_next = sum(c.most_common(1)[0][1] for c in successor.values())
    assert top_next / sum(sum(c.values()) for c in successor.values()) > 0.3
    # Zipf popularity: the most popular item is far above the median one.
    counts = sorted(collections.Counter(r[1] for line in d["lines"] for r in line if r[1]).values())
    assert counts[-1] > 5 * counts[len(counts) // 2]
    # Features carry signal: a user's favourite topic is the topic of most of its items.
    topic_vocab = idx["f"]["100"]
    fav_share = []
    for line in d["lines"][:300]:
        profile = next(r[2] for r in line if r[1] is None)
        fav_raw = next(raw for raw, reid in idx["f"]["104"].items() if reid == profile["104"])
        fav_share.append(np.mean([r[3]["100"] == topic_vocab[fav_raw] for r in line if r[1]]))
    assert np.mean(fav_share) > 0.4
    assert all(isinstance(v["103"], float) for v in d["items"].values() if "103" in v)
    with open(demo_dir / "creative_emb" / "emb_81_32.pkl", "rb") as f:
        emb = pickle.load(f)
    assert 0.8 < len(emb) / 2000 < 0.97 and set(emb) <= set(idx["i"])
    assert all(v.dtype == np.float32 and v.shape == (32,) for v in emb.values())


def test_demo_inference_dir(demo_dir, tmp_path):
    summary = write_demo_inference_dir(tmp_path / "inf", demo_dir, seed=0, num_users=100)
    with open(demo_dir / "indexer.pkl", "rb") as f:
        idx = pickle.load(f)
    lines = [json.loads(line) for line in (tmp_path / "inf" / "predict_seq.jsonl").read_text().splitlines()]
    assert len(lines) == 100 and summary["cold_items"] > 0
    cold_users = {line[0][0] for line in lines if isinstance(line[0][0], str)}
    assert cold_users and not cold_users & set(idx["u"])
    records = [r for line in lines for r in line]
    assert any(r[1] is not None and r[1] > len(idx["i"]) for r in records)  # cold items
    assert any(isinstance(v, str) for r in records if r[2] for v in r[2].values())  # unseen user value
    rows = [json.loads(line) for line in (tmp_path / "inf" / "predict_set.jsonl").read_text().splitlines()]
    assert len(rows) == 2000 + summary["cold_candidates"] and len({r["retrieval_id"] for r in rows}) == len(
        rows
    )
    assert {r["creative_id"] for r in rows} >= set(idx["i"])
    assert any(isinstance(t, str) for r in rows for t in r["features"].get("102", []))  # unseen tag
    # A training user's predict sequence starts with its training history.
    train = {line[0][0]: line for line in read_dir(demo_dir)["lines"]}
    warm = next(line for line in lines if isinstance(line[0][0], int))
    train_items = [r for r in train[warm[0][0]] if r[1]]
    assert [r for r in warm if r[1]][: len(train_items)] == train_items
