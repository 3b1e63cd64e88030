"""Each converter on tiny synthetic raw files in the real formats (never the public data)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from prepare_data import CONVERTERS, convert_movielens_100k, convert_sasrec, main, reids_equal_raw_ids


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def read_out(path: Path) -> dict:
    with open(path / "indexer.pkl", "rb") as f:
        indexer = pickle.load(f)
    lines = [json.loads(line) for line in (path / "seq.jsonl").read_text().splitlines()]
    return {
        "indexer": indexer,
        "lines": lines,
        "items": json.loads((path / "item_feat_dict.json").read_text()),
        "schema": json.loads((path / "schema.json").read_text()),
        "profiles": {line[0][0]: r[2] for line in lines for r in line if r[1] is None},
    }


def decode(indexer: dict, fid: str, reids) -> object:
    """Feature reid(s) -> raw value(s), through the written indexer."""
    back = {reid: raw for raw, reid in indexer["f"][fid].items()}
    return [back[r] for r in reids] if isinstance(reids, list) else back[reids]


def test_sasrec(tmp_path):
    src = write(tmp_path / "pairs.txt", "2 10\n2 30\n1 30\n1 20\n1 10\n3 20\n")
    assert main(["sasrec", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    d = read_out(tmp_path / "out")
    assert d["indexer"]["u"] == {1: 1, 2: 2, 3: 3}  # ascending id order
    assert d["indexer"]["i"] == {10: 1, 20: 2, 30: 3}
    assert d["lines"][0] == [[1, 3, None, {}, 1, 1], [1, 2, None, {}, 1, 2], [1, 1, None, {}, 1, 3]]
    assert all(len(r) == 6 and r[4] == 1 for line in d["lines"] for r in line)  # clicks, no profiles
    assert d["items"] == {"1": {}, "2": {}, "3": {}}
    assert all(fids == [] for fids in d["schema"].values())
    assert reids_equal_raw_ids(convert_sasrec(src)) == (True, False)


def make_ml1m(root: Path) -> Path:
    write(root / "sasrec" / "ml-1m.txt", "1 1\n1 2\n1 3\n2 2\n2 1\n")
    write(root / "sasrec" / "sas_to_original_users.txt", "1 50\n2 7\n")
    write(root / "sasrec" / "sas_to_original_items.txt", "1 1198\n2 3552\n3 12\n")
    write(
        root / "grouplens-raw" / "users.dat",
        "7::F::25::3::55455-1234\n50::M::1::10::48067\n99::M::56::0::12345\n",
    )
    movies = (
        "12::Café Society (1995)::Drama\n"
        "1198::Raiders (1981)::Action|Adventure\n"
        "3552::No Year::Comedy|Action\n"
    )
    write(root / "grouplens-raw" / "movies.dat", movies, encoding="latin-1")
    return root


def test_movielens_1m(tmp_path, capsys):
    src = make_ml1m(tmp_path / "ml-1m")
    assert main(["movielens-1m", "--src", str(src), "--out", str(tmp_path / "out"), "--skip_check"]) == 0
    assert "2 users, 3 items, 5 item records" in capsys.readouterr().out
    d = read_out(tmp_path / "out")
    idx = d["indexer"]
    assert idx["u"] == {1: 1, 2: 2} and idx["i"] == {1: 1, 2: 2, 3: 3}  # reid == SASRec id
    user1, user2 = d["profiles"][1], d["profiles"][2]
    assert decode(idx, "103", user1["103"]) == "M" and decode(idx, "104", user1["104"]) == 1
    assert decode(idx, "105", user1["105"]) == 10 and decode(idx, "109", user1["109"]) == "48"
    assert decode(idx, "103", user2["103"]) == "F" and decode(idx, "109", user2["109"]) == "55"
    assert decode(idx, "100", d["items"]["1"]["100"]) == 1981
    assert decode(idx, "200", d["items"]["1"]["200"]) == ["Action", "Adventure"]
    assert "100" not in d["items"]["2"]  # no year in the title: missing
    assert decode(idx, "100", d["items"]["3"]["100"]) == 1995  # latin-1 title parsed
    assert d["lines"][0][-1][1] is None  # profile last, as in the real data
    assert [r[5] for r in d["lines"][0][:-1]] == [1, 2, 3]  # position index as timestamp
    assert d["schema"]["user_sparse"] == ["103", "104", "105", "109"]
    assert d["schema"]["item_sparse"] == ["100"] and d["schema"]["item_array"] == ["200"]


def test_movielens_1m_count_check_fails_on_partial_data(tmp_path, capsys):
    src = make_ml1m(tmp_path / "ml-1m")
    assert main(["movielens-1m", "--src", str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "users 2 (expected 6,040)" in err and "item records 5 (expected 999,611)" in err
    assert not (tmp_path / "out").exists()  # nothing written when the check fails


def test_movielens_1m_missing_join(tmp_path, capsys):
    src = make_ml1m(tmp_path / "ml-1m")
    write(src / "sasrec" / "sas_to_original_users.txt", "1 50\n")
    assert main(["movielens-1m", "--src", str(src), "--out", str(tmp_path / "out"), "--skip_check"]) == 2
    assert "user 2 of ml-1m.txt is missing from sas_to_original_users.txt" in capsys.readouterr().err


def test_movielens_100k(tmp_path):
    src = tmp_path / "ml-100k"
    # user 2's events are out of order in the file; two of them share a timestamp (stable order)
    write(src / "u.data", "2\t3\t4\t900\n1\t1\t5\t100\n2\t1\t3\t500\n2\t2\t1\t500\n1\t3\t2\t50\n")
    write(src / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = ["0"] * 19
    genre_rows = [("1", "Toy Story (1995)", "01-Jan-1995", {3, 4}), ("2", "Ça (1996)", "12-Feb-1996", {1}),
                  ("3", "unknown", "", {0})]  # fmt: skip
    text = "".join(
        "|".join([mid, title, rel, "", "http://x"] + ["1" if g in gs else f for g, f in enumerate(flags)])
        + "\n"
        for mid, title, rel, gs in genre_rows
    )
    write(src / "u.item", text, encoding="latin-1")
    assert main(["movielens-100k", "--src", str(src), "--out", str(tmp_path / "out"), "--skip_check"]) == 0
    d = read_out(tmp_path / "out")
    idx = d["indexer"]
    assert [(r[1], r[5]) for r in d["lines"][1] if r[1]] == [(1, 500), (2, 500), (3, 900)]
    assert [(r[1], r[5]) for r in d["lines"][0] if r[1]] == [(3, 50), (1, 100)]
    assert d["profiles"][2]["104"] == idx["f"]["104"][5] and decode(idx, "104", d["profiles"][1]["104"]) == 2
    assert decode(idx, "103", d["profiles"][2]["103"]) == "F"
    assert decode(idx, "105", d["profiles"][1]["105"]) == "technician"
    assert (
        decode(idx, "200", d["items"]["1"]["200"]) == [3, 4]
        and decode(idx, "100", d["items"]["2"]["100"]) == 1996
    )
    assert d["items"]["3"] == {"200": [idx["f"]["200"][0]]}  # unknown release date: no year


def test_movielens_100k_accepts_grouplens_raw_parent(tmp_path):
    write(tmp_path / "ml" / "grouplens-raw" / "u.data", "1\t1\t5\t100\n")
    write(tmp_path / "ml" / "grouplens-raw" / "u.user", "1|24|M|technician|85711\n")
    write(
        tmp_path / "ml" / "grouplens-raw" / "u.item",
        "1|T (1995)|01-Jan-1995||u|" + "|".join(["0"] * 19) + "\n",
    )
    converted = convert_movielens_100k(tmp_path / "ml")
    assert converted.counts() == (1, 1, 1) and converted.item_features[1] == {"100": 1995, "200": []}


def test_s3rec(tmp_path, capsys):
    src = write(tmp_path / "Tiny.txt", "1 1 2 3\n2 2 4\n")
    write(tmp_path / "Tiny_item2attributes.json", json.dumps({"1": [5, 6, 5], "2": [6], "4": [], "9": [7]}))
    assert main(["s3rec", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "2 users, 4 items, 5 item records" in capsys.readouterr().out
    d = read_out(tmp_path / "out")
    idx = d["indexer"]
    assert idx["u"] == {1: 1, 2: 2} and idx["i"] == {1: 1, 2: 2, 3: 3, 4: 4}
    assert decode(idx, "200", d["items"]["1"]["200"]) == [5, 6]  # duplicates dropped, order kept
    assert d["items"]["3"] == {} and d["items"]["4"] == {}  # no attributes
    assert 7 not in idx["f"]["200"]  # items outside the sequences are not written
    assert [r[5] for r in d["lines"][0]] == [1, 2, 3] and d["schema"]["item_array"] == ["200"]


@pytest.mark.parametrize(
    "dataset, make, missing",
    [
        ("sasrec", lambda p: p / "none.txt", "none.txt"),
        ("s3rec", lambda p: write(p / "Tiny.txt", "1 1 2\n"), "Tiny_item2attributes.json"),
        ("movielens-1m", lambda p: p, "ml-1m.txt"),
        (
            "movielens-1m",
            lambda p: (make_ml1m(p), (p / "grouplens-raw" / "movies.dat").unlink())[0],
            "movies.dat",
        ),
        ("movielens-100k", lambda p: write(p / "u.data", "1\t1\t5\t100\n").parent, "u.user"),
    ],
)
def test_missing_file_exits_2(tmp_path, capsys, dataset, make, missing):
    src = make(tmp_path)
    assert main([dataset, "--src", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error:") and missing in err
    assert not (tmp_path / "out").exists()


def test_malformed_input_exits_2(tmp_path, capsys):
    src = write(tmp_path / "pairs.txt", "1 1\n1 x\n")
    assert main(["sasrec", "--src", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "pairs.txt:2" in capsys.readouterr().err


def test_existing_output_needs_overwrite(tmp_path):
    src = write(tmp_path / "pairs.txt", "1 1\n")
    out = str(tmp_path / "out")
    assert main(["sasrec", "--src", str(src), "--out", out]) == 0
    assert main(["sasrec", "--src", str(src), "--out", out]) == 2
    assert main(["sasrec", "--src", str(src), "--out", out, "--overwrite"]) == 0


def test_cli_rejects_unknown_dataset():
    assert sorted(CONVERTERS) == ["movielens-100k", "movielens-1m", "s3rec", "sasrec"]
    with pytest.raises(SystemExit) as e:
        main(["netflix", "--src", "x", "--out", "y"])
    assert e.value.code == 2
