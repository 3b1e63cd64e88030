"""Property test (issue 17): non-finite values and structural corruptions injected into generated
V1 directories. Whatever hypothesis draws, loading ends in one of two ways:

- a DataError whose message starts with the path of a file of the directory (policy `error`, or
  a corruption no policy can skip, such as a bad feature id in schema.json);
- a dataset (policy `skip`) that counted the skipped records and holds no trace of them: every
  continual value finite, one line per user, items in timestamp order.
Never a traceback (any other exception fails the test), never a silent load of bad data.
"""
from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import read_seq_lines, write_seq_lines
from dataset import DataError, load_dataset
from layouts.write_v1 import UserHistory, write_v1_dataset

KINDS = {"200": "item_sparse", "203": "item_continual", "300": "user_sparse",
         "302": "user_continual"}
# injection -> whether it is a bad record that `skip` skips (else an error under both policies)
INJECTIONS = {"none": None, "nonfinite_item": True, "nonfinite_user": True, "dup_user": True,
              "merged_lines": True, "deep_record": True, "shuffled_timestamps": None,
              "dot_feature_id": False}
BAD_NUMBERS = ["1e300", "-4e38", "3.5e38", '"1.5"', "true", "[1.0]"]


@st.composite
def v1_data(draw):
    """(items, users): 2-6 items with a sparse and a continual feature, 3-5 users with 1-5
    events each (timestamps ascending), profiles first or last."""
    n_items = draw(st.integers(2, 6))
    items = {9000 + k: {"200": draw(st.sampled_from(["a", "b", "c"])),
                        "203": draw(st.floats(-1e3, 1e3, allow_nan=False))}
             for k in range(n_items)}
    users = []
    for u in range(draw(st.integers(3, 5))):
        n = draw(st.integers(1, 5))
        events = [(9000 + draw(st.integers(0, n_items - 1)), draw(st.sampled_from([None, 0, 1])),
                   1000 * u + t) for t in range(n)]
        users.append(UserHistory(f"u{u}", {"300": draw(st.sampled_from(["M", "F"])), "302": 0.5},
                                 events, profile_position=draw(st.sampled_from(["first", "last"]))))
    return items, users


def inject(d: Path, what: str, rnd: random.Random) -> None:
    lines = read_seq_lines(d)
    k = rnd.randrange(len(lines))
    if what == "nonfinite_item":
        path = d / "item_feat_dict.json"
        feats = json.loads(path.read_text())
        key = rnd.choice(sorted(feats))
        feats[key]["203"] = "@BAD@"
        path.write_text(json.dumps(feats).replace('"@BAD@"', rnd.choice(BAD_NUMBERS)))
    elif what == "nonfinite_user":
        recs = json.loads(lines[k])
        profile = next(r for r in recs if r[2])
        profile[2]["302"] = "@BAD@"
        lines[k] = json.dumps(recs).replace('"@BAD@"', rnd.choice(BAD_NUMBERS)).encode()
    elif what == "dup_user":
        lines.insert(rnd.randrange(k + 1, len(lines) + 1), lines[k])
    elif what == "merged_lines":
        j = (k + 1) % len(lines)
        lines[k] = json.dumps(json.loads(lines[k]) + json.loads(lines[j])).encode()
        del lines[j]
    elif what == "deep_record":
        depth = rnd.choice([50, 1500, 3000])
        lines[k] = lines[k][:-1] + b"," + b"[" * depth + b"]" * depth + b"]"
    elif what == "shuffled_timestamps":
        recs = json.loads(lines[k])
        stamps = [r[5] for r in recs if r[1]]
        rnd.shuffle(stamps)
        for r in (r for r in recs if r[1]):
            r[5] = stamps.pop()
        lines[k] = json.dumps(recs).encode()
    elif what == "dot_feature_id":
        path = d / "schema.json"
        schema = json.loads(path.read_text())
        schema["item_continual"].append(rnd.choice(["20.5", "a.b", ".", ""]))
        path.write_text(json.dumps(schema))
    write_seq_lines(d, lines)


def expected_item_order(d: Path) -> list[list[int]]:
    """Each line's item reids sorted (stably) by timestamp: what the loader must produce."""
    out = []
    for line in read_seq_lines(d):
        items = [r for r in json.loads(line) if r[1] and r[3]]
        out.append([r[1] for r in sorted(items, key=lambda r: r[5])])
    return out


def check_clean(data, d: Path, what: str) -> None:
    assert np.isfinite(data.tables.item_continual).all()
    assert np.isfinite(data.tables.user_continual).all()
    users = data.seqs.line_user.tolist()
    assert len(set(users)) == len(users), "a user on two lines"
    if what in ("none", "shuffled_timestamps"):
        assert data.stats["bad_records_skipped"] == 0
        s = data.seqs
        got = [s.tok_id[s.line_offsets[n]:s.line_offsets[n + 1]][s.tok_type[
            s.line_offsets[n]:s.line_offsets[n + 1]] == 1].tolist() for n in range(s.num_lines)]
        assert got == expected_item_order(d)
    else:
        assert data.stats["bad_records_skipped"] >= 1, "bad data loaded silently"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=v1_data(), what=st.sampled_from(sorted(INJECTIONS)),
       policy=st.sampled_from(["error", "skip"]), seed=st.integers(0, 2 ** 16))
def test_injected_corruption_is_an_error_or_a_counted_skip(data, what, policy, seed):
    items, users = data
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "v1"
        write_v1_dataset(d, users, items, KINDS)
        inject(d, what, random.Random(seed))
        skippable = INJECTIONS[what]
        try:
            loaded = load_dataset(d, use_cache=False, on_bad_record=policy)
        except DataError as e:
            assert str(e).startswith(str(d)), str(e)
            assert len(str(e)) < 600, "messages stay one readable line"
            assert skippable is False or (skippable and policy == "error") or \
                "the dataset is empty" in str(e), f"{what} under {policy}: {e}"
            return
        assert skippable is None or (skippable and policy == "skip"), \
            f"{what} under {policy} loaded without an error"
        check_clean(loaded, d, what)
