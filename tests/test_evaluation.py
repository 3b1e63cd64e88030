"""evaluation/evaluate.py against brute force, and leave-one-out training end to end (metrics.json)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import main as main_module

from training import flags, setup
from inputs.batching import item_histories, leave_one_out_split, query_arrays
from evaluation.evaluate import evaluate, format_table

METRIC_KEYS = ["HR@1", "HR@5", "HR@10", "HR@20", "HR@50", "NDCG@1", "NDCG@5", "NDCG@10",
               "NDCG@20", "NDCG@50", "MRR", "AUC", "score", "num_users", "protocol"]


def dirs(tmp_path) -> list[str]:
    return ["--cache_dir", str(tmp_path / "cache"), "--log_dir", str(tmp_path / "log"),
            "--tb_dir", str(tmp_path / "tb"), "--ckpt_dir", str(tmp_path / "ckpt")]


@pytest.fixture(scope="module")
def adaptive_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adaptive")
    args = flags.parse_args(["--demo_users", "300", "--demo_items", "200", "--maxlen", "20",
                                   "--hidden_units", "16", "--use_adaptive_similarity",
                                   "--similarity_types", "dot", "cosine", "scaled", "bilinear",
                                   "--eval_protocol", "leave_one_out", *dirs(tmp)])
    data = setup.load_data(args)
    model = setup.build_model(args, data.schema.to_dict(), setup.feature_tensors(data),
                                    data.itemnum, data.usernum).eval()
    with torch.no_grad():  # move every similarity parameter away from its start value
        for p in model.similarity.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return args, data, model


def brute_force_metrics(model, data, queries, maxlen: int) -> dict[str, float]:
    """One user at a time, one item at a time, through model.similarity's pairwise forward."""
    arrays = query_arrays(data.seqs, queries.inputs, maxlen)
    hist, offsets = item_histories(data.seqs, queries.inputs)
    items = model.embed_items(torch.arange(data.itemnum + 1))
    per_user = []
    with torch.no_grad():
        q = model.predict(torch.from_numpy(arrays["seq"]), torch.from_numpy(arrays["token_type"]))
        for u, target in enumerate(queries.targets):
            seen = set(hist[offsets[u]:offsets[u + 1]].tolist()) - {int(target)}
            scores = {j: float(model.similarity(q[u], items[j])) for j in range(1, data.itemnum + 1)
                      if j not in seen}
            t = scores[int(target)]
            higher = sum(s > t for s in scores.values())
            ties = sum(s == t for j, s in scores.items() if j != target)
            rank, n = 1 + higher + ties, len(scores)
            per_user.append({"HR@10": float(rank <= 10), "MRR": 1.0 / rank,
                             "NDCG@10": 1 / math.log2(rank + 1) if rank <= 10 else 0.0,
                             "AUC": (n - rank) / (n - 1)})
    return {k: float(np.mean([m[k] for m in per_user])) for k in per_user[0]}


def test_full_ranking_with_adaptive_similarity_equals_brute_force(adaptive_setup):
    args, data, model = adaptive_setup
    split = leave_one_out_split(data.seqs)
    queries = type(split.test)(split.test.inputs.take(np.arange(40)), split.test.targets[:40])
    fast = evaluate(model, data.seqs, queries, data.itemnum, args.maxlen, torch.device("cpu"),
                    batch_size=7)  # several chunks
    slow = brute_force_metrics(model, data, queries, args.maxlen)
    assert fast["num_users"] == 40 and fast["protocol"] == "full"
    for key, value in slow.items():
        assert fast[key] == pytest.approx(value, abs=1e-6), key


def test_sampled_protocol_is_labelled(adaptive_setup):
    args, data, model = adaptive_setup
    split = leave_one_out_split(data.seqs)
    result = evaluate(model, data.seqs, split.test, data.itemnum, args.maxlen, torch.device("cpu"),
                      sampled=100)
    assert result["protocol"] == "sampled-100"
    assert "sampled-100" in format_table({"test": result})


def test_leave_one_out_training_writes_metrics_far_above_random(tmp_path):
    # the default-size demo (2,000 items): random ranking gives HR@10 = 10 / 2000 = 0.005
    main_module.main(["--maxlen", "20", "--hidden_units", "16", "--num_epochs", "2",
                      "--device", "cpu", "--eval_protocol", "leave_one_out", *dirs(tmp_path)])
    metrics = json.loads((tmp_path / "log" / "metrics.json").read_text())
    for part in ("valid", "test"):
        assert list(metrics[part]) == METRIC_KEYS
        assert metrics[part]["protocol"] == "full"
        assert metrics[part]["num_users"] == 3000
    assert metrics["test"]["HR@10"] > 5 * 10 / 2000, metrics["test"]
    assert metrics["test"]["score"] == pytest.approx(
        0.31 * metrics["test"]["HR@10"] + 0.69 * metrics["test"]["NDCG@10"])
