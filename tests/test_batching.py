"""inputs/batching.py against the baseline's sample construction, written here as plain Python loops.

Parity: generated V1 data (users with and without profile, profile record first and last, lines
longer than the window, short lines, featureless items, null and unknown action types) is read
back with json, turned into token lists record by record, and run through the baseline's loop;
the result must equal `training_arrays` / `query_arrays` exactly. Then negatives, the splits and
the epoch order of `TrainBatches`.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from inputs.batching import (Ranges, TrainBatches, all_lines, item_histories, leave_one_out_split,
                      query_arrays, random_user_split, training_arrays, window_index)
from dataset import SequenceData, load_dataset
from sampling import SmartNegativeSampler, build_sampler
from layouts.write_v1 import UserHistory, write_v1_dataset

ITEM, PROFILE = 1, 2
KINDS = {"10": "item_sparse", "11": "item_array", "20": "user_sparse", "21": "user_continual"}
CATALOGUE = [1000 + k for k in range(30)]   # reids 1..30, all with features
UNUSED = CATALOGUE[24:]                     # never interacted with
DROPPED = UNUSED[:2]                        # then removed from item_feat_dict.json
FEATURELESS = [5000 + k for k in range(3)]  # only in events, with no features: not items


# --------------------------------------------------------------------------- generated data

def _generate(out, seed: int, maxlen: int):
    """A V1 directory whose lines exercise every branch of the sample construction."""
    rng = np.random.default_rng(seed)
    items = {cid: {"10": int(cid % 4), "11": [int(cid % 3), int(cid % 5)]} for cid in CATALOGUE}
    lengths = [0, 1, 2, 3, maxlen, maxlen + 1, maxlen + 2, maxlen + 3, 3 * maxlen + 8]
    users, ts = [], 0
    for u in range(60):
        n = lengths[u % len(lengths)] if u < 2 * len(lengths) else int(rng.integers(0, 3 * maxlen))
        events = []
        for _ in range(n):
            pool = FEATURELESS if rng.random() < 0.1 else CATALOGUE[:24]
            action = [0, 1, None, 2, 7][int(rng.integers(5))]
            ts += 1
            events.append((int(rng.choice(pool)), action, ts))
        kind = (u + u // len(lengths)) % 3  # no profile / profile last / profile first
        feats = None if kind == 0 else {"20": f"v{u % 4}", "21": float(u)}
        users.append(UserHistory(f"user{u}", feats, events, "first" if kind == 2 else "last"))
    write_v1_dataset(out, users, items, KINDS)
    feat_path = out / "item_feat_dict.json"
    feat = json.loads(feat_path.read_text())
    indexer_i = {cid: k + 1 for k, cid in enumerate(CATALOGUE)}
    for cid in DROPPED:
        del feat[str(indexer_i[cid])]
    feat_path.write_text(json.dumps(feat))
    return out


def _reference_tokens(data_dir) -> dict[int, list[tuple[int, int, int]]]:
    """user reid -> [(id, token type, action)], record by record as the baseline reads a line:
    the profile (a record with a user id and user features) first, then every record with an
    item id and a non-empty item feature dict, in file order. Lines without items are left out."""
    out = {}
    for line in (data_dir / "seq.jsonl").read_text().splitlines():
        profile, items, user = [], [], 0
        for u, i, u_feat, i_feat, action, _ts in json.loads(line):
            user = user or u
            if u and u_feat:
                profile = [(u, PROFILE, 0)]
            if i and i_feat:
                items.append((i, ITEM, action if action is not None else 0))
        if items:
            out[user] = profile + items
    return out


def _reference_sample(toks, maxlen: int) -> dict[str, list[int]]:
    """The original baseline's training loop over one token list."""
    if toks[0][1] == PROFILE and len(toks) > maxlen + 2:  # pinned-profile rule (inputs/batching.py)
        toks = [toks[0]] + toks[-(maxlen + 1):]
    names = ("seq", "token_type", "next_token_type", "next_action_type", "pos")
    out = {k: [0] * (maxlen + 1) for k in names}
    nxt, idx = toks[-1], maxlen
    for tok in reversed(toks[:-1]):
        out["seq"][idx] = tok[0]
        out["token_type"][idx] = tok[1]
        out["next_token_type"][idx] = nxt[1]
        out["next_action_type"][idx] = nxt[2]
        if nxt[1] == ITEM:
            out["pos"][idx] = nxt[0]
        nxt = tok
        idx -= 1
        if idx == -1:
            break
    return out


def _reference_query(toks, maxlen: int) -> dict[str, list[int]]:
    """The newest maxlen + 1 tokens, right-aligned, the profile pinned first when cut off."""
    if toks[0][1] == PROFILE and len(toks) > maxlen + 1:
        toks = [toks[0]] + toks[-maxlen:]
    toks = toks[-(maxlen + 1):]
    pad = [0] * (maxlen + 1 - len(toks))
    return {"seq": pad + [t[0] for t in toks], "token_type": pad + [t[1] for t in toks]}


@pytest.fixture(params=[(0, 6), (1, 4), (2, 1)], ids=["seed0-maxlen6", "seed1-maxlen4",
                                                      "seed2-maxlen1"])
def generated(request, tmp_path):
    seed, maxlen = request.param
    data_dir = _generate(tmp_path / "data", seed, maxlen)
    data = load_dataset(data_dir, cache_dir=tmp_path / "cache")
    return data_dir, data, maxlen


def test_generated_data_covers_the_cases(generated):
    data_dir, data, maxlen = generated
    toks = _reference_tokens(data_dir)
    lens = [len(t) for t in toks.values()]
    with_profile = [t for t in toks.values() if t[0][1] == PROFILE]
    assert any(len(t) > maxlen + 2 for t in with_profile), "no pinned-profile case"
    assert any(len(t) > maxlen + 2 for t in toks.values() if t[0][1] != PROFILE)
    assert min(lens) <= 2 and data.stats["lines_without_items"] > 0
    lines = [json.loads(x) for x in (data_dir / "seq.jsonl").read_text().splitlines()]
    first = [line[0][2] is not None for line in lines if len(line) > 1]
    assert any(first) and not all(first)  # profile records both first and elsewhere
    assert set(toks) == set(int(u) for u in data.seqs.line_user)


def test_training_arrays_equal_the_baseline_loop(generated):
    data_dir, data, maxlen = generated
    ref = _reference_tokens(data_dir)
    got = training_arrays(data.seqs, all_lines(data.seqs), maxlen)
    assert all(v.shape == (data.seqs.num_lines, maxlen + 1) for v in got.values())
    for row, user in enumerate(data.seqs.line_user):
        want = _reference_sample(ref[int(user)], maxlen)
        for key, values in want.items():
            assert got[key][row].tolist() == values, (key, int(user), ref[int(user)])


def test_training_arrays_on_leave_one_out_train_ranges(generated):
    """The training part of leave_one_out drops the last two items of evaluated users."""
    data_dir, data, maxlen = generated
    ref = _reference_tokens(data_dir)
    split = leave_one_out_split(data.seqs)
    got = training_arrays(data.seqs, split.train, maxlen)
    for row, line in enumerate(split.train.lines):
        toks = ref[int(data.seqs.line_user[line])]
        n_items = sum(t[1] == ITEM for t in toks)
        toks = toks[:-2] if n_items >= 3 else toks
        want = _reference_sample(toks, maxlen)
        for key, values in want.items():
            assert got[key][row].tolist() == values, (key, toks)


def test_query_arrays_equal_the_reference(generated):
    data_dir, data, maxlen = generated
    ref = _reference_tokens(data_dir)
    ranges = all_lines(data.seqs)
    got = query_arrays(data.seqs, ranges, maxlen)
    for row, user in enumerate(data.seqs.line_user):
        toks = ref[int(user)]
        want = _reference_query(toks, maxlen)
        assert got["seq"][row].tolist() == want["seq"]
        assert got["token_type"][row].tolist() == want["token_type"]
        assert got["seq"][row, -1] == toks[-1][0]  # the newest token is in the last slot


def test_item_histories_drop_profiles(generated):
    data_dir, data, _ = generated
    ref = _reference_tokens(data_dir)
    flat, offsets = item_histories(data.seqs, all_lines(data.seqs))
    for row, user in enumerate(data.seqs.line_user):
        want = [t[0] for t in ref[int(user)] if t[1] == ITEM]
        assert flat[offsets[row]:offsets[row + 1]].tolist() == want


@pytest.mark.parametrize("smart", [False, True], ids=["uniform", "popularity"])
def test_negatives_follow_the_exclusion_rule(generated, smart):
    data_dir, data, maxlen = generated
    ref = _reference_tokens(data_dir)
    exists = {int(k) for k in json.loads((data_dir / "item_feat_dict.json").read_text())}
    counts = data.item_counts()
    for seed in range(3):
        sampler = build_sampler(data.itemnum, counts, np.asarray(data.item_valid), seed, smart,
                                0.5, "counts", 0.75, "constant", 0)
        batches = TrainBatches(data.seqs, all_lines(data.seqs), maxlen, 16, sampler, seed=seed)
        seen_lines = []
        for batch in _epoch_with_lines(batches, 1, seen_lines):
            assert batch["neg"].shape == batch["pos"].shape and batch["neg"].dtype == np.int64
            np.testing.assert_array_equal(batch["neg"] != 0, batch["pos"] != 0)
            for row, line in enumerate(seen_lines[-1]):
                user_items = {t[0] for t in ref[int(data.seqs.line_user[line])] if t[1] == ITEM}
                for neg in batch["neg"][row][batch["neg"][row] != 0].tolist():
                    assert 1 <= neg <= data.itemnum
                    assert neg in exists, f"negative {neg} is not in item_feat_dict.json"
                    assert neg not in user_items
        assert sorted(np.concatenate(seen_lines).tolist()) == list(range(data.seqs.num_lines))


def _epoch_with_lines(batches: TrainBatches, epoch: int, seen: list):
    """batches.epoch(epoch), recording the line indices of each batch in `seen`."""
    original = batches.assemble

    def recording(ranges):
        seen.append(np.asarray(ranges.lines).copy())
        return original(ranges)

    batches.assemble = recording
    try:
        yield from batches.epoch(epoch)
    finally:
        del batches.assemble


# --------------------------------------------------------------------------- hand examples

def _hand_seqs() -> SequenceData:
    """line 0: profile(user 1) + items 11..15; line 1: items 21..23; line 2: profile(user 3) +
    items 31, 32; line 3: item 41. Actions: the item id's last digit modulo 3."""
    lines = [(1, True, [11, 12, 13, 14, 15]), (2, False, [21, 22, 23]), (3, True, [31, 32]),
             (4, False, [41])]
    tok_id, tok_type, tok_action, lens = [], [], [], []
    for user, prof, items in lines:
        tok_id += [user] * prof + items
        tok_type += [PROFILE] * prof + [ITEM] * len(items)
        tok_action += [0] * prof + [i % 10 % 3 for i in items]
        lens.append(prof + len(items))
    return SequenceData(np.array(tok_id, np.int32), np.array(tok_type, np.int8),
                        np.array(tok_action, np.int16), np.concatenate([[0], np.cumsum(lens)]),
                        np.array([1, 2, 3, 4], np.int32), np.array([True, False, True, False]))


def test_leave_one_out_split_by_hand():
    split = leave_one_out_split(_hand_seqs())
    # Users with fewer than 3 items (lines 2, 3) train on everything and are not evaluated.
    assert split.train.lines.tolist() == [0, 1, 2, 3]
    assert split.train.start.tolist() == [0, 6, 9, 12]
    assert split.train.end.tolist() == [4, 7, 12, 13]
    assert split.valid.inputs.lines.tolist() == [0, 1]
    assert split.valid.inputs.start.tolist() == [0, 6]
    assert split.valid.inputs.end.tolist() == [4, 7]
    assert split.valid.targets.tolist() == [14, 22]
    assert split.test.inputs.end.tolist() == [5, 8]
    assert split.test.targets.tolist() == [15, 23]


def test_training_and_query_arrays_by_hand():
    seqs = _hand_seqs()
    split = leave_one_out_split(seqs)
    got = training_arrays(seqs, split.train.take(np.array([0])), maxlen=4)
    # tokens [P1, 11, 12, 13]: 13 is only a target
    assert got["seq"].tolist() == [[0, 0, 1, 11, 12]]
    assert got["token_type"].tolist() == [[0, 0, 2, 1, 1]]
    assert got["next_token_type"].tolist() == [[0, 0, 1, 1, 1]]
    assert got["next_action_type"].tolist() == [[0, 0, 1, 2, 0]]
    assert got["pos"].tolist() == [[0, 0, 11, 12, 13]]

    q = query_arrays(seqs, split.valid.inputs, maxlen=4)
    assert q["seq"].tolist() == [[0, 1, 11, 12, 13], [0, 0, 0, 0, 21]]
    assert q["token_type"].tolist() == [[0, 2, 1, 1, 1], [0, 0, 0, 0, 1]]
    q = query_arrays(seqs, split.test.inputs, maxlen=3)  # 5 tokens > 4 slots: profile pinned
    assert q["seq"].tolist() == [[1, 12, 13, 14], [0, 0, 21, 22]]


def test_window_index_pins_only_long_profile_ranges():
    idx = window_index(np.array([0, 10, 20]), np.array([6, 16, 23]), np.array([True, False, True]),
                       4)
    assert idx.tolist() == [[0, 3, 4, 5], [12, 13, 14, 15], [-1, 20, 21, 22]]


# --------------------------------------------------------------------------- splits and order

def _flat_seqs(n_lines: int, tokens_per_line: int = 2) -> SequenceData:
    n = n_lines * tokens_per_line
    return SequenceData(np.arange(1, n + 1, dtype=np.int32) % 50 + 1, np.ones(n, np.int8),
                        np.zeros(n, np.int16),
                        np.arange(0, n + 1, tokens_per_line, dtype=np.int64),
                        np.arange(1, n_lines + 1, dtype=np.int32), np.zeros(n_lines, bool))


def test_random_user_split_is_seeded_and_disjoint():
    seqs = _flat_seqs(200)
    a, b, c = (random_user_split(seqs, 0.1, seed) for seed in (3, 3, 4))
    assert len(a.valid) == 20 and len(a.train) == 180 and a.test is None
    np.testing.assert_array_equal(a.valid.lines, b.valid.lines)
    np.testing.assert_array_equal(a.train.lines, b.train.lines)
    assert a.valid.lines.tolist() != c.valid.lines.tolist()
    assert not set(a.train.lines.tolist()) & set(a.valid.lines.tolist())
    assert sorted(a.train.lines.tolist() + a.valid.lines.tolist()) == list(range(200))
    for r in (a.train, a.valid):  # ranges stay those of their lines
        np.testing.assert_array_equal(r.start, 2 * r.lines)
        np.testing.assert_array_equal(r.end, 2 * r.lines + 2)


@pytest.mark.parametrize("n_lines, n_valid", [(1, 0), (2, 1), (5, 1)])
def test_random_user_split_tiny(n_lines, n_valid):
    split = random_user_split(_flat_seqs(n_lines), 0.1, seed=0)
    assert len(split.valid) == n_valid and len(split.train) == n_lines - n_valid


class _Recorder(TrainBatches):
    """TrainBatches that records the line indices of every batch it makes."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lines: list[list[int]] = []

    def assemble(self, ranges: Ranges):
        self.lines.append(ranges.lines.tolist())
        return super().assemble(ranges)

    def order(self, epoch: int) -> list[int]:
        self.lines = []
        n_batches = sum(1 for _ in self.epoch(epoch))
        assert n_batches == len(self)
        return [x for b in self.lines for x in b]


def _recorder(seqs, seed, batch_size=8, **kw) -> _Recorder:
    sampler = SmartNegativeSampler(50, popularity_source="power_law", seed=seed + 100)
    return _Recorder(seqs, all_lines(seqs), 3, batch_size, sampler, seed=seed, **kw)


def test_epoch_order_depends_only_on_seed_and_epoch():
    seqs = _flat_seqs(37)
    a = _recorder(seqs, seed=5)
    first, second = a.order(1), a.order(2)
    b = _recorder(seqs, seed=5)
    assert b.order(2) == second  # epoch 2 without replaying epoch 1 (a resumed run)
    assert b.order(1) == first
    assert first != second
    assert _recorder(seqs, seed=6).order(1) != first
    assert sorted(first) == list(range(37))
    assert _recorder(seqs, seed=5, shuffle=False).order(1) == list(range(37))


def test_two_ranks_split_the_users():
    seqs = _flat_seqs(36)
    for epoch in (1, 2):
        r0 = _recorder(seqs, seed=9, rank=0, world_size=2).order(epoch)
        r1 = _recorder(seqs, seed=9, rank=1, world_size=2).order(epoch)
        assert len(r0) == len(r1) == 18
        assert not set(r0) & set(r1)
        assert sorted(r0 + r1) == list(range(36))


def test_two_ranks_odd_user_count_pad_by_one():
    """With an odd count every rank still takes the same number of rows (DDP stays in step):
    the union covers all users and exactly one user appears twice."""
    seqs = _flat_seqs(37)
    r0 = _recorder(seqs, seed=9, rank=0, world_size=2).order(1)
    r1 = _recorder(seqs, seed=9, rank=1, world_size=2).order(1)
    assert len(r0) == len(r1) == 19
    assert set(r0) | set(r1) == set(range(37))
    assert len(r0) + len(r1) - len(set(r0) | set(r1)) == 1
