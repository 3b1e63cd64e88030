"""The objectives wired into training: shared and per-row negatives, log Q (objectives/negatives.py,
SmartNegativeSampler.sample_shared), in-batch candidates (objective.objective_loss), the
baseline's BCE unchanged, every loss learning on the demo data, flags and checkpoints."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from run_files import checkpoint
import infer
import main as main_mod
from training import flags as train_flags, optim, setup, step, validation
from objectives import objective
from conftest import DEMO_ITEMS, DEMO_USERS
from objectives.negatives import BatchNegatives
from sampling import SmartNegativeSampler
from similarity import DotSimilarity

SMALL = ["--maxlen", "20", "--hidden_units", "16", "--batch_size", "32", "--device", "cpu",
         "--demo_users", str(DEMO_USERS), "--demo_items", str(DEMO_ITEMS)]


# --------------------------------------------------------------------------- host side

def test_shared_draws_and_their_log_expected_counts():
    counts = np.array([0, 10, 5, 1, 0, 4], dtype=np.float64)  # item 4 never seen: no pop mass
    make = lambda ratio: SmartNegativeSampler(5, counts, seed=3, popular_ratio=ratio)  # noqa: E731
    ids, log_count = make(0.0).sample_shared(8)
    np.testing.assert_allclose(log_count, np.log(8 / 5))  # uniform: K / (valid items)
    sampler = make(0.25)  # exactly 2 of 8 by popularity, 6 uniform
    ids, log_count = sampler.sample_shared(8)
    np.testing.assert_allclose(log_count, np.log(2 * sampler.popularity[ids] + 6 / 5))
    assert sampler.epoch_stats()["popular_ratio"] == 0.25
    again, _ = make(0.25).sample_shared(8)
    np.testing.assert_array_equal(ids, again)  # seeded: the same draw for the same seed
    assert ids.min() >= 1 and ids.max() <= 5


def _batch():
    """B=2 rows, L=4 slots; row 1 has two padding slots; item 7 is a target twice."""
    pos = np.array([[3, 7, 7, 2], [0, 0, 5, 7]], dtype=np.int64)
    return {"seq": np.array([[1, 3, 7, 7], [0, 0, 4, 5]], dtype=np.int64),
            "token_type": (np.array([[1, 1, 1, 1], [0, 0, 1, 1]])).astype(np.int64),
            "next_token_type": (pos != 0).astype(np.int64), "pos": pos}


def test_in_batch_q_is_the_targets_expected_count_and_padding_is_dropped():
    counts = np.array([0, 1, 2, 3, 4, 5, 6, 9], dtype=np.float64)
    neg = BatchNegatives(SmartNegativeSampler(7, counts, seed=0), 0, True, counts, logq=True)
    out = neg.shared_negatives(_batch())
    np.testing.assert_array_equal(out["target_index"], [0, 1, 2, 3, 6, 7])  # slots 4, 5: padding
    freq = np.maximum(counts, 1) / np.maximum(counts, 1).sum()
    np.testing.assert_allclose(out["pos_logq"], np.log(6 * freq[[3, 7, 7, 2, 5, 7]]), rtol=1e-6)
    # the distinct targets, each standing for its copies: log Q - log(copies)
    np.testing.assert_array_equal(out["cand"], [2, 3, 5, 7])
    np.testing.assert_allclose(out["cand_logq"], np.log(6 * freq[[2, 3, 5, 7]] / [1, 1, 1, 3]),
                               rtol=1e-6)
    off = BatchNegatives(SmartNegativeSampler(7, counts, seed=0), 4, True, counts, logq=False)
    out = off.shared_negatives(_batch())
    assert out["cand"].shape == (4 + 4,) and not out["pos_logq"].any()
    np.testing.assert_allclose(out["cand_logq"], -np.log([1, 1, 1, 1, 1, 1, 1, 3]), rtol=1e-6)


class _Stub(torch.nn.Module):
    """Returns fixed vectors the way BaseModel.forward(..., vectors=True) does."""

    def __init__(self, feats, items):
        super().__init__()
        self.feats, self.items = feats, items
        self.similarity = DotSimilarity()
        self.item_emb = torch.nn.Embedding(items.shape[0], 1)

    def forward(self, seq, token_type, pos, neg, cand=None, vectors=False, item_mm=None):
        return self.feats, self.items[pos], None, self.items[cand]


def _stub_loss(seed: int, negatives: BatchNegatives, obj: objective.Objective):
    """The objective's loss on _batch() with its negatives and fixed vectors (_Stub), backward
    done -> (loss, feats, items, arrays)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(8, 3, generator=g, dtype=torch.float64)
    arrays = _batch()
    arrays.update(negatives.shared_negatives(arrays))
    batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
    loss = objective.objective_loss(_Stub(feats, items), _Stub(feats, items), batch, obj)
    loss.backward()
    return loss, feats, items, arrays


def test_in_batch_negatives_exclude_padding_and_the_positions_own_positive():
    counts = np.ones(8)
    negatives = BatchNegatives(SmartNegativeSampler(7, counts, seed=0), 0, True, counts,
                               logq=False)
    obj = objective.Objective(objective.LOSSES["sampled_softmax"](), 1.0, True, False)
    loss, feats, items, arrays = _stub_loss(0, negatives, obj)
    flat_pos, q = arrays["pos"].reshape(-1), feats.detach().reshape(-1, 3)
    valid = [i for i in range(8) if flat_pos[i]]
    per = []
    for i in valid:  # candidates: the other valid targets that are not this position's item
        others = [items[flat_pos[j]] @ q[i] for j in valid if flat_pos[j] != flat_pos[i]]
        lp = items[flat_pos[i]] @ q[i]
        per.append(torch.logsumexp(torch.stack([lp, *others]), 0) - lp)
    # rel 1e-6: the copies' log c travels as float32
    assert loss.item() == pytest.approx(torch.stack(per).mean().item(), rel=1e-6)
    assert torch.all(feats.grad[1, :2] == 0)  # padding positions take no part


def test_per_row_negatives_give_each_row_its_own_k_and_the_loss_uses_only_those():
    counts = np.ones(8)
    neg = BatchNegatives(SmartNegativeSampler(7, counts, seed=0), 3, False, counts, logq=False,
                         per_row=True)
    obj = objective.Objective(objective.LOSSES["bce"](3), 1.0, False, False)
    loss, feats, items, arrays = _stub_loss(1, neg, obj)
    assert arrays["cand"].shape == (2 * 3,) and arrays["cand"].min() >= 1
    q, per = feats.detach(), []
    for b in range(2):
        for t in range(4):
            p = arrays["pos"][b, t]
            if not p:
                continue
            row = arrays["cand"][3 * b:3 * b + 3]  # row b's own negatives, hits dropped
            negs = [items[j] @ q[b, t] for j in row if j != p]
            lp = items[p] @ q[b, t]
            per.append(-torch.nn.functional.logsigmoid(lp)
                       - sum(torch.nn.functional.logsigmoid(-v) for v in negs))
    assert loss.item() == pytest.approx(torch.stack(per).mean().item(), rel=1e-12)
    assert torch.all(feats.grad[1, :2] == 0)  # padding positions take no part
    with pytest.raises(ValueError, match="per-row"):
        BatchNegatives(neg.sampler, 3, True, counts, logq=False, per_row=True)


# --------------------------------------------------------------------------- training

def _setup(tmp_path, demo_cache, *flags):
    args = train_flags.parse_args([*SMALL, "--cache_dir", str(demo_cache), "--dropout_rate", "0",
                                "--log_dir", str(tmp_path / "l"), "--tb_dir", str(tmp_path / "t"),
                                "--ckpt_dir", str(tmp_path / "c"), *flags])
    setup.set_seed(0)
    data = setup.load_data(args)
    split = setup.make_split(args, data)
    model = setup.build_model(args, data.schema.to_dict(), setup.feature_tensors(data),
                                 data.itemnum, data.usernum)
    from inputs.batching import TrainBatches
    batches = TrainBatches(data.seqs, split.train, args.maxlen, args.batch_size,
                           setup.make_sampler(args, data, split, seed=1), seed=0)
    return args, model, batches


def test_bce_is_bitwise_the_baseline_loss(tmp_path, demo_cache):
    args, model, batches = _setup(tmp_path, demo_cache)
    batch = step.to_device(next(batches.epoch(1)), torch.device("cpu"))
    assert "target_index" not in batch  # the baseline's sampler, untouched
    torch.manual_seed(0)
    got = step.compute_loss(model, batch, args, None)
    torch.manual_seed(0)
    baseline = step.bce_loss(*model(batch["seq"], batch["token_type"], batch["pos"],
                                        batch["neg"]), batch)
    assert torch.equal(got, baseline)


LOSS_CONFIGS = {
    "bce": [],
    "bce_k8": ["--num_negatives", "8"],
    "gbce": ["--loss", "gbce", "--num_negatives", "16"],
    "ss_uniform": ["--loss", "sampled_softmax", "--num_negatives", "32"],
    "ss_inbatch_uniform": ["--loss", "sampled_softmax", "--num_negatives", "16",
                           "--negatives", "uniform", "in_batch"],
    "ss_popularity": ["--loss", "sampled_softmax", "--num_negatives", "16", "--negatives",
                      "popularity", "--popular_ratio", "0.5", "--mask_history"],
    "ss_cosine": ["--loss", "sampled_softmax", "--num_negatives", "32", "--similarity",
                  "cosine", "--tau", "0.1"],
    "full": ["--loss", "full_softmax"],
    "full_adaptive": ["--loss", "full_softmax", "--use_adaptive_similarity"],
}


@pytest.mark.parametrize("name", list(LOSS_CONFIGS))
def test_each_loss_decreases_on_the_demo_data(tmp_path, demo_cache, name):
    args, model, batches = _setup(tmp_path, demo_cache, *LOSS_CONFIGS[name])
    optimizer = optim.build_optimizer(model, 0.01, (0.9, 0.98))
    batch = step.to_device(next(batches.epoch(1)), torch.device("cpu"))
    values = []
    for _ in range(8):  # the same batch: its loss must fall
        loss = step.compute_loss(model, batch, args, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < 0.9 * values[0], values


def test_validation_loss_works_under_a_softmax_loss(tmp_path, demo_cache):
    args, model, batches = _setup(tmp_path, demo_cache, "--loss", "sampled_softmax",
                                  "--num_negatives", "16", "--negatives", "uniform", "in_batch")
    loss = validation.validation_loss(model, batches.seqs, batches.ranges, args,
                                    torch.device("cpu"), None, batches.sampler)
    assert math.isfinite(loss) and loss > 0


@pytest.mark.parametrize("flags, message", [
    (["--negatives", "in_batch"], "needs --loss sampled_softmax"),
    (["--loss", "sampled_softmax", "--negatives", "uniform", "popularity"], "one global draw"),
    (["--loss", "sampled_softmax", "--tau", "0"], "argument --tau: must be a finite number > 0"),
    (["--loss", "gbce", "--gbce_t", "2"], "argument --gbce_t: must be in [0, 1]"),
    (["--logq_correction"], "applies to softmax losses"),
    (["--loss", "sampled_softmax", "--num_negatives", "0"], "argument --num_negatives: must be a positive integer"),
])
def test_bad_objective_flags_are_one_line_errors(capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        train_flags.parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_logq_default_follows_the_proposal():
    parse = lambda *f: train_flags.parse_args(list(f)).logq_correction  # noqa: E731
    assert parse("--loss", "sampled_softmax") is False  # uniform: a constant, off
    assert parse("--loss", "sampled_softmax", "--negatives", "uniform", "in_batch") is True
    assert parse("--loss", "sampled_softmax", "--negatives", "popularity") is True
    assert parse("--loss", "sampled_softmax", "--use_smart_sampling") is True  # the same draw
    assert parse("--loss", "sampled_softmax", "--negatives", "popularity", "--no-logq_correction") is False
    assert parse("--loss", "gbce") is False and train_flags.parse_args(["--loss", "gbce"]).num_negatives == 256


def test_checkpoint_records_the_objective_and_inference_rebuilds_it(tmp_path, demo_cache):
    flags = [*SMALL, "--cache_dir", str(demo_cache), "--eval_protocol", "leave_one_out",
             "--num_epochs", "1", "--loss", "sampled_softmax", "--num_negatives", "32",
             "--negatives", "uniform", "in_batch", "--similarity", "cosine", "--tau", "0.1",
             "--ckpt_dir", str(tmp_path / "ckpt")]
    trained = main_mod.main([*flags, "--log_dir", str(tmp_path / "l1"), "--tb_dir", str(tmp_path / "t1")])
    path = checkpoint.latest_checkpoint(tmp_path / "ckpt")
    args = json.loads((path / "config.json").read_text())["args"]
    assert (args["loss"], args["num_negatives"], args["negatives"], args["tau"]) == \
        ("sampled_softmax", 32, ["uniform", "in_batch"], 0.1)
    assert args["similarity"] == "cosine" and args["logq_correction"] is True
    served = main_mod.main([*flags, "--log_dir", str(tmp_path / "l2"), "--tb_dir", str(tmp_path / "t2"),
                            "--inference_only", "--state_dict_path", str(path)])
    assert served["test"]["NDCG@10"] == trained["test"]["NDCG@10"]
    train_args, _, _ = infer.load_trained(str(path))
    assert train_args.similarity == "cosine" and train_args.loss == "sampled_softmax"
    dot = ["dot" if f == "cosine" else f for f in flags]
    with pytest.raises(checkpoint.CheckpointError, match="--similarity"):
        main_mod.main([*dot, "--log_dir", str(tmp_path / "l3"), "--tb_dir", str(tmp_path / "t3"),
                       "--inference_only", "--state_dict_path", str(path)])


def test_ablation_objective_configs_parse_and_bce_is_their_reference():
    import ablation
    from studies import configs, report
    fix = ["--maxlen", "200", "--hidden_units", "64", "--num_blocks", "2", "--dropout_rate", "0.1",
           "--no-dnn_relu", "--norm_first", "--feature_fusion", "sum", "--init", "normal",
           "--positions", "from_start", "--adam_betas", "0.9", "0.999"]
    configs.check_train_flags(fix, list(configs.OBJECTIVE_CONFIGS))  # raises on a bad config
    assert ablation.parse_args(["--out", "x"]).configs == configs.PLAN_CONFIGS
    row = lambda name, ndcg: {"config": name, "seeds_finished": 3, "NDCG@10_mean": ndcg,  # noqa: E731
                              "NDCG@10_std": 0.002, "HR@10_mean": 0.3, "HR@10_std": 0.002}
    rows = [row("bce", 0.13), row("full_softmax", 0.18)]
    report.add_comparison(rows)
    assert rows[0]["verdict_NDCG@10"] == "reference"
    assert rows[1]["verdict_NDCG@10"] == "better (> 2 std)"
    assert rows[1]["delta_NDCG@10"] == pytest.approx(0.05)


def test_bench_compares_losses_with_the_same_keys(demo_cache):
    import bench
    result = bench.bench(["--demo", "--cache_dir", str(demo_cache), "--demo_users", "300",
                          "--demo_items", "200", "--maxlen", "10", "--hidden_units", "8",
                          "--num_blocks", "1", "--batch_size", "32", "--steps", "1",
                          "--warmup", "0", "--no-eval", "--device", "cpu", "--peak_size", "64",
                          "--compare_loss", "sampled_softmax:16", "full_softmax", "gbce:8"])
    labels = [c["label"] for c in result["cases"]]
    assert labels == ["dense fp32 attn=fast loss=bce", "dense fp32 attn=fast loss=sampled_softmax:16",
                      "dense fp32 attn=fast loss=full_softmax", "dense fp32 attn=fast loss=gbce:8"]
    keys = set(result["cases"][0])
    assert all(set(c) == keys for c in result["cases"]) and "train_seq_per_s" in keys
    assert all(c["loss_finite"] for c in result["cases"])
    # the candidate products are counted: full softmax over 200 items > 16 shared negatives
    flops = [c["model_gflops_per_step"] for c in result["cases"]]
    assert flops[2] > flops[1] > flops[0]
    with pytest.raises(SystemExit, match="compare_loss"):
        bench.parse_args(["--compare_loss", "softmax"])


def test_resumed_softmax_run_ends_like_the_uninterrupted_one(tmp_path, demo_cache):
    """Shared and in-batch negatives come from the sampler's own seeded stream, drawn ahead by
    the input worker: a run stopped after epoch 1 and resumed ends with the uninterrupted run's
    metrics, exactly (CPU)."""
    flags = [*SMALL, "--cache_dir", str(demo_cache), "--eval_protocol", "leave_one_out",
             "--loss", "sampled_softmax", "--num_negatives", "16", "--negatives", "popularity",
             "in_batch", "--input_workers", "1", "--keep_checkpoints", "0"]

    def run(name, *extra):
        folders = ["--log_dir", str(tmp_path / name / "log"), "--tb_dir", str(tmp_path / name / "tb"),
                   "--ckpt_dir", str(tmp_path / name / "ckpt")]
        return main_mod.main([*flags, *folders, *extra])

    whole = run("whole", "--num_epochs", "2")
    run("split", "--num_epochs", "1")
    resumed = run("split", "--num_epochs", "2", "--resume")
    assert resumed["test"] == whole["test"] and resumed["valid"] == whole["valid"]
