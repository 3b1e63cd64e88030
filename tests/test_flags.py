"""The optional flags end to end: adaptive similarity, smart sampling, and the documented CLI."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main as main_module

from training import flags as train_flags, optim, setup
from similarity import AdaptiveSimilarity, DotSimilarity

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--demo_users", "300", "--demo_items", "200", "--maxlen", "20", "--hidden_units", "16",
        "--device", "cpu", "--log_every", "2"]


def run(tmp_path: Path, *extra: str) -> dict:
    argv = TINY + ["--cache_dir", str(tmp_path / "cache"), "--log_dir", str(tmp_path / "log"),
                   "--tb_dir", str(tmp_path / "tb"), "--ckpt_dir", str(tmp_path / "ckpt"), *extra]
    return main_module.main(argv)


def scalars(tb_dir: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_adaptive_similarity_logs_changing_scalars_and_stores_them(tmp_path):
    run(tmp_path, "--num_epochs", "1", "--use_adaptive_similarity",
        "--similarity_types", "dot", "cosine", "scaled", "bilinear")
    logged = scalars(tmp_path / "tb")
    start = {"alpha": 0.5, "beta": 0.3, "gamma": 0.2, "delta": 0.2, "temperature": 1.0}
    for name, initial in start.items():
        values = logged[f"Similarity/{name}"]
        assert len(values) >= 2
        assert abs(values[-1] - initial) > 1e-5, f"{name} never moved from {initial}"
    config = json.loads(next((tmp_path / "ckpt").glob("*/config.json")).read_text())
    assert set(config["similarity"]) == set(start)
    assert config["similarity"]["alpha"] == pytest.approx(logged["Similarity/alpha"][-1], abs=0.05)


def test_default_scores_with_the_plain_dot_product_exactly(tmp_path):
    args = train_flags.parse_args(TINY + ["--cache_dir", str(tmp_path / "cache")])
    data = setup.load_data(args)
    model = setup.build_model(args, data.schema.to_dict(), setup.feature_tensors(data),
                                    data.itemnum, data.usernum).eval()
    assert isinstance(model.similarity, DotSimilarity)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(1, data.itemnum + 1, (4, 21), generator=g)
    token_type = torch.ones_like(seq)
    pos = torch.randint(1, data.itemnum + 1, (4, 21), generator=g)
    neg = torch.randint(1, data.itemnum + 1, (4, 21), generator=g)
    with torch.no_grad():
        pos_logits, neg_logits = model(seq, token_type, pos, neg)
        feats = model.log2feats(seq, token_type)
        assert torch.equal(pos_logits, (feats * model.embed_items(pos)).sum(-1))
        assert torch.equal(neg_logits, (feats * model.embed_items(neg)).sum(-1))


def test_adaptive_flag_builds_the_chosen_similarity(tmp_path):
    args = train_flags.parse_args(TINY + ["--cache_dir", str(tmp_path / "cache"),
                                          "--use_adaptive_similarity", "--similarity_types",
                                          "dot", "cosine"])
    data = setup.load_data(args)
    model = setup.build_model(args, data.schema.to_dict(), setup.feature_tensors(data),
                                    data.itemnum, data.usernum)
    assert isinstance(model.similarity, AdaptiveSimilarity)
    assert set(model.similarity.scalars()) == {"alpha", "beta", "temperature"}


def test_unknown_similarity_type_fails_at_parsing_with_valid_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_flags.parse_args(["--similarity_types", "dot", "cosin"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    for name in ("dot", "cosine", "scaled", "bilinear"):
        assert name in err


def test_smart_sampling_runs_and_logs_sampling_scalars(tmp_path):
    run(tmp_path / "smart", "--num_epochs", "1", "--use_smart_sampling", "--popular_ratio", "0.3")
    run(tmp_path / "uniform", "--num_epochs", "1")
    smart, uniform = scalars(tmp_path / "smart" / "tb"), scalars(tmp_path / "uniform" / "tb")
    assert smart["Sampling/popular_ratio"][-1] == pytest.approx(0.3, abs=0.01)
    assert uniform["Sampling/popular_ratio"][-1] == 0
    # popularity-drawn negatives are more popular than uniform ones (by ~2 percentile points
    # here; the spread over seeds is 0.4). Compared with the uniform run, not with 50: uniform
    # draws that skip each user's (mostly popular) items sit below 50.
    assert smart["Sampling/neg_popularity"][-1] > uniform["Sampling/neg_popularity"][-1]


def test_linear_curriculum_ramps_the_popular_share(tmp_path):
    run(tmp_path, "--num_epochs", "3", "--use_smart_sampling", "--popular_ratio", "0.4",
        "--popular_ratio_schedule", "linear", "--curriculum_epochs", "3")
    ratios = scalars(tmp_path / "tb")["Sampling/popular_ratio"]
    assert ratios == pytest.approx([0.0, 0.2, 0.4], abs=0.01)


def test_readme_documents_every_flag():
    # README.md, or the feature's own page under docs/ (engineers' user-facing text goes there)
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    flags = [opt for action in train_flags.build_parser()._actions
             for opt in action.option_strings if opt.startswith("--") and opt != "--help"]
    missing = [f for f in flags if f not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_every_flag_has_help_text():
    for action in train_flags.build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help text"


class _TwoKindsOfParameters(torch.nn.Module):
    """An embedding table (sparse or not) and a dense layer, as main's model exposes them."""

    def __init__(self, sparse: bool):
        super().__init__()
        self.table, self.dense = torch.nn.Embedding(5, 4, sparse=sparse), torch.nn.Linear(2, 2)

    def sparse_parameters(self):
        return [self.table.weight] if self.table.sparse else []


@pytest.mark.parametrize("extra,betas", [((), (0.9, 0.98)),
                                         (("--adam_betas", "0.8", "0.999"), (0.8, 0.999))])
@pytest.mark.parametrize("sparse", [False, True])
def test_adam_betas_reach_dense_and_sparse_optimizers(extra, betas, sparse):
    """Default: the baseline's betas; --adam_betas sets them for Adam and SparseAdam alike."""
    args = train_flags.parse_args(list(extra))
    optimizer = optim.build_optimizer(_TwoKindsOfParameters(sparse), args.lr, args.adam_betas)
    assert [g["betas"] for g in optimizer.param_groups] == [betas] * (2 if sparse else 1)


@pytest.mark.parametrize("argv,block", [((), "post_ln"), (("--norm_first",), "pre_ln"),
                                        (("--block", "pre_ln"), "pre_ln"),
                                        (("--block", "sasrec"), "sasrec")])
def test_block_flag_and_norm_first_name_one_block(argv, block):
    args = train_flags.parse_args(list(argv))
    assert (args.block, args.norm_first) == (block, block == "pre_ln")


def test_norm_first_contradicting_block_fails(capsys):
    with pytest.raises(SystemExit):
        train_flags.parse_args(["--norm_first", "--block", "sasrec"])
    assert "contradicts --block sasrec" in capsys.readouterr().err


def test_checkpoint_args_from_before_the_block_flag_give_their_block():
    """Older config.json args have norm_first and no block: the model they describe is kept."""
    for norm_first, block in ((False, "post_ln"), (True, "pre_ln")):
        assert train_flags.block_of(argparse.Namespace(norm_first=norm_first)) == block


def test_dense_adam_is_torchs_fused_adam_with_the_op_by_op_update():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(7, 5))
    b.data.copy_(a.data)
    fused = optim.dense_adam([a], 1e-2, (0.9, 0.98))
    plain = torch.optim.Adam([b], lr=1e-2, betas=(0.9, 0.98), foreach=False)
    assert fused.defaults["fused"]  # this torch (CI's 2.13) has the CPU kernel
    for _ in range(5):
        grad = torch.randn(7, 5)
        a.grad, b.grad = grad.clone(), grad.clone()
        fused.step()
        plain.step()
    torch.testing.assert_close(a.data, b.data, rtol=1e-6, atol=1e-6)
    assert not torch.equal(a.data, torch.zeros(7, 5))


def test_dense_adam_falls_back_where_torch_has_no_fused_kernel(monkeypatch):
    real = torch.optim.Adam

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be ... supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    opt = optim.dense_adam([torch.nn.Parameter(torch.randn(3))], 1e-3, (0.9, 0.98))
    assert isinstance(opt, real) and not opt.defaults["fused"]
