"""--eval_protocol competition: the split (last conversion, else last click), the candidate pool,
the action-weighted metrics, against hand-computed values; and one end-to-end run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import main as main_mod

from training import flags, setup, validation
from inputs.batching import competition_split
from conftest import DEMO_ITEMS, DEMO_USERS
from dataset import SequenceData
from evaluation.evaluate import evaluate
from evaluation.metrics import MetricAccumulator
from similarity import DotSimilarity


def _seqs(lines: list[list[tuple[int, int]]], profile: bool = True) -> SequenceData:
    """lines of (item id, action); each line gets a profile token first (user = line + 1)."""
    tok_id, tok_type, tok_action, lens = [], [], [], []
    for u, items in enumerate(lines, 1):
        tok_id += [u] * profile + [i for i, _ in items]
        tok_type += [2] * profile + [1] * len(items)
        tok_action += [0] * profile + [a for _, a in items]
        lens.append(profile + len(items))
    return SequenceData(np.array(tok_id, np.int32), np.array(tok_type, np.int8),
                        np.array(tok_action, np.int8),
                        np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                        np.arange(1, len(lines) + 1, dtype=np.int32), np.full(len(lines), profile))


def test_split_holds_out_last_conversion_else_last_click():
    seqs = _seqs([
        [(11, 0), (12, 1), (13, 0), (14, 1), (15, 0)],  # line 0: tokens 0..5 (0 = profile)
        [(21, 0), (22, 1), (23, 2), (24, 1), (25, 0)],  # line 1: tokens 6..11
        [(31, 0), (32, 0), (33, 0)],                    # line 2: no click: not evaluated
        [(41, 1), (42, 0)],                             # line 3: its click has no item before it
        [(51, 0), (52, 1)],                             # line 4: one target, no valid one
    ])
    split = competition_split(seqs)
    # test: line 0's last click (item 14, token 4); line 1's conversion (23, token 9) although
    # a click follows it; line 4's click (52, token 21)
    assert split.test.targets.tolist() == [14, 23, 52]
    assert split.test.inputs.lines.tolist() == [0, 1, 4]
    assert split.test.inputs.end.tolist() == [4, 9, 21]
    assert split.test.weights.tolist() == [1.0, 2.5, 1.0]
    # valid: the same rule before the test target
    assert split.valid.targets.tolist() == [12, 22]
    assert split.valid.inputs.end.tolist() == [2, 8]
    assert split.valid.weights.tolist() == [1.0, 1.0]
    # train: before the valid target, else before the test target, else everything
    assert split.train.end.tolist() == [2, 8, 16, 19, 21]
    assert split.train.start.tolist() == seqs.line_offsets[:-1].tolist()


def test_weighted_metrics_hand_computed():
    acc = MetricAccumulator()
    acc.add(torch.tensor([1, 3, 20]), torch.tensor([50, 50, 50]), torch.tensor([1.0, 2.5, 1.0]))
    out = acc.result("competition")
    # HR@10 per user 1, 1, 0; NDCG@10 1, 1/log2(4) = 0.5, 0
    assert out["HR@10"] == pytest.approx(2 / 3) and out["NDCG@10"] == pytest.approx(0.5)
    assert out["HR@10_weighted"] == pytest.approx(3.5 / 4.5)
    assert out["NDCG@10_weighted"] == pytest.approx((1.0 + 2.5 * 0.5) / 4.5)
    assert out["score_weighted"] == pytest.approx(0.31 * 3.5 / 4.5 + 0.69 * 2.25 / 4.5)
    assert out["score"] == pytest.approx(0.31 * 2 / 3 + 0.69 * 0.5)
    assert out["protocol"] == "competition"


class _ScoreIsItemId(nn.Module):
    """Item k scores k for every query: ranks are known by hand."""

    def __init__(self, itemnum: int):
        super().__init__()
        self.similarity = DotSimilarity()
        self.register_buffer("table", torch.arange(itemnum + 1, dtype=torch.float32)[:, None])

    def embed_items(self, ids):
        return self.table[ids]

    def predict(self, seq, token_type):
        return torch.ones(seq.shape[0], 1)


@pytest.mark.parametrize("pool,rank", [(None, 3), ([3, 4], 2), ([1, 2, 3], 1), ([1, 2], None)])
def test_candidate_pool(pool, rank):
    """Target 3 of items 1..5 scoring their id: rank 3 among all items, 2 in {3, 4}, 1 in
    {1, 2, 3}; outside the pool {1, 2} it is a miss although the pool is smaller than 10."""
    seqs = _seqs([[(1, 0), (3, 1)]])
    split = competition_split(seqs)
    out = evaluate(_ScoreIsItemId(5), seqs, split.test, 5, 4, "cpu", filter_seen=False,
                   protocol="competition", candidates=None if pool is None else np.array(pool))
    if rank is None:
        assert out["HR@10"] == out["NDCG@10"] == out["HR@10_weighted"] == 0.0
    else:
        assert out["HR@10"] == 1.0 and out["NDCG@10"] == pytest.approx(1 / np.log2(rank + 1))
        assert out["NDCG@10_weighted"] == out["NDCG@10"]


def test_main_competition_protocol(demo_cache, tmp_path):
    """Same metrics.json shape as leave_one_out, its own protocol name; the demo has clicks
    only, so the weighted metrics equal the plain ones."""
    base = tmp_path / "run"
    argv = ["--demo_users", str(DEMO_USERS), "--demo_items", str(DEMO_ITEMS), "--maxlen", "20",
            "--hidden_units", "16", "--batch_size", "64", "--num_epochs", "1",
            "--log_dir", str(base / "logs"), "--tb_dir", str(base / "tb"),
            "--ckpt_dir", str(base / "ckpt"), "--cache_dir", str(demo_cache), "--device", "cpu",
            "--eval_protocol", "competition"]
    result = main_mod.main(argv)
    metrics = json.loads((base / "logs" / "metrics.json").read_text())
    assert {"valid", "test", "best_epoch", "best_checkpoint", "history"} <= metrics.keys()
    for part in ("valid", "test"):
        m = metrics[part]
        assert m["protocol"] == "competition" and m["num_users"] > 0
        assert m["HR@10_weighted"] == pytest.approx(m["HR@10"])
        assert m["score"] == pytest.approx(0.31 * m["HR@10"] + 0.69 * m["NDCG@10"])
    assert result["test"]["HR@10"] == metrics["test"]["HR@10"]


def test_competition_flags_errors():
    with pytest.raises(SystemExit):
        flags.parse_args(["--eval_protocol", "competition", "--eval_sampled", "100"])


def test_candidate_pool_from_the_data():
    from types import SimpleNamespace
    data = SimpleNamespace(itemnum=5)
    assert validation.candidate_pool(data) is None  # no pool: all items
    data.candidate_items = [2, 3]  # a pool the V2 reader attaches
    assert validation.candidate_pool(data).tolist() == [2, 3]
    data.candidate_items = [2, 6]
    with pytest.raises(main_mod.DataError, match=r"candidate pool: item ids must be in 1..5"):
        validation.candidate_pool(data)


def test_v2_candidate_folder_is_the_pool(tmp_path):
    """On V2 data with candidate/, the competition protocol ranks against its known items (the
    demo's pool: every catalogue item, plus OIDs the indexer does not know, which drop out)."""
    from demo_data import write_demo_dataset
    from layouts.inference_v2 import candidate_item_rids
    write_demo_dataset(tmp_path / "v2", num_users=40, num_items=120, seed=0, layout="v2")
    args = flags.parse_args(["--data_dir", str(tmp_path / "v2"), "--eval_protocol",
                                "competition", "--cache_dir", str(tmp_path / "cache")])
    data = setup.load_data(args)
    pool = validation.candidate_pool(data)
    assert pool.tolist() == candidate_item_rids(tmp_path / "v2").tolist()
    assert pool.tolist() == list(range(1, data.itemnum + 1))
