"""The model's fast paths against plain references, and smoke runs of the speed tools.

- attention: impl="fast" == impl="sdpa" == a plain softmax, padding rows included; with dropout,
  the keep mask's rate, the exact 1 / (1 - p) scaling, and the output's expectation;
- BaseModel.forward == a straightforward per-token forward written here from the model's own
  submodules (itemdnn per token for seq/pos/neg, userdnn on every slot: the baseline's
  feat2emb), for post-LN and pre-LN, both attention impls, both position modes, sum fusion;
- `_item_lookup`'s whole-catalogue pass == the per-token pass (values and gradients);
- sparse (SparseAdam) and dense (Adam) embeddings: same first loss, same parameters after a step;
- bf16 autocast runs and stays close to fp32; flops.step_flops == torch's FLOP counter;
- bench.py and gpu_check.py run end to end on CPU.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench
from benchmarks import flops
import gpu_check
from training import flags as train_flags, optim, setup, step as train_step
from inputs.batching import TrainBatches
from dataset import load_dataset
from kernels.attention import attention
from kernels.dropout import dropout, fast_keep_mask
from model import ATTENTION_IMPLS, BaseModel

TOKEN_ITEM, TOKEN_PROFILE = 1, 2


# --------------------------------------------------------------------------- attention

def _qkv_mask(b=3, h=2, n=7, d=8, seed=0):
    """Random q, k, v (b, h, n, d) and the model's mask for rows with 0, 3 and n-1 padding slots."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    pads = [0, 3, n - 1][:b]
    nonpad = torch.stack([torch.arange(n) >= p for p in pads])
    return q, k, v, BaseModel._attention_mask(nonpad)


def _plain_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d) masked) v, step by step."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [7, 8, 1])
def test_fast_attention_equals_sdpa_and_plain_softmax_without_dropout(causal, n):
    q, k, v, mask = _qkv_mask(n=n)
    ref = _plain_attention(q, k, v, mask)
    for impl in ("fast", "fast_full", "sdpa"):
        out = attention(q, k, v, mask, 0.0, impl, causal=causal)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # a fully padded row attends to itself only: its output is its own value vector
    torch.testing.assert_close(attention(q, k, v, mask, 0.0, "fast", causal=causal)[2, :, :-1],
                               v[2, :, :-1], rtol=1e-5, atol=1e-6)


def test_causal_fast_attention_has_the_plain_gradients():
    """The causal split computes only part of the scores; gradients still match the plain
    full-matrix attention for q, k and v."""
    q, k, v, mask = _qkv_mask(n=9)
    grads = []
    for fn in (lambda a, b, c: attention(a, b, c, mask, 0.0, "fast", causal=True),
               lambda a, b, c: _plain_attention(a, b, c, mask)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        (fn(*leaves) * torch.linspace(-1, 1, 8)).sum().backward()
        grads.append([t.grad for t in leaves])
    for fast, plain in zip(*grads):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_keep_mask_rate_is_one_minus_p(p):
    torch.manual_seed(0)
    n = 4_000_000
    keep = fast_keep_mask(torch.empty(n), p)
    assert keep.dtype == torch.float32 and keep.shape == (n,)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    sigma = math.sqrt(p * (1 - p) / n)
    # p is resolved to 1/65536, far below 5 sigma here
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * sigma + 1 / 65536
    odd = fast_keep_mask(torch.empty(3, 1001), p)  # element count not a multiple of 4
    assert odd.shape == (3, 1001)
    scaled = fast_keep_mask(torch.empty(1000, dtype=torch.bfloat16), p, 2.0)  # the like's dtype
    assert scaled.dtype == torch.bfloat16 and set(scaled.unique().tolist()) == {0.0, 2.0}


@pytest.mark.parametrize("p", [0.2, 0.5, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_scales_kept_values_exactly_and_zeroes_dropped(p, dtype):
    """In bf16 too: 1 / (1 - p) = 1.25 is exact there and rides in the mask; 1 / 0.9 is not,
    and is applied as a python scalar (computed in fp32), as x * scale would be."""
    torch.manual_seed(1)
    x = (torch.rand(100_003) + 0.5).to(dtype)  # no zeros, so a zero output means dropped
    y = dropout(x, p, training=True)
    kept = y != 0
    assert torch.equal(y[kept], x[kept] * (1.0 / (1.0 - p)))
    assert (y[~kept] == 0).all()
    assert 0.0 < kept.float().mean().item() < 1.0
    assert dropout(x, p, training=False) is x and dropout(x, 0.0, training=True) is x


@pytest.mark.parametrize("impl,causal", [("fast", False), ("fast", True), ("sdpa", False)])
def test_attention_dropout_has_the_right_expectation(impl, causal):
    """E[dropout output] = no-dropout output; tolerance 5 sigma of the mean, per element:
    Var = p / (1 - p) * sum_j w_ij^2 v_j^2 for one mask."""
    p, copies = 0.2, 20_000
    q, k, v, mask = _qkv_mask(b=1, h=2, n=6, d=4, seed=3)
    torch.manual_seed(2)
    many = [t.repeat(copies, 1, 1, 1) for t in (q, k, v)]
    mean = attention(*many, mask.repeat(copies, 1, 1, 1), p, impl, causal=causal).mean(0)
    ref = attention(q, k, v, mask, 0.0, impl)[0]
    weights = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~mask, float("-inf")).softmax(-1)[0]
    var = p / (1 - p) * (weights ** 2) @ (v[0] ** 2)
    assert ((mean - ref).abs() <= 5 * (var / copies).sqrt() + 1e-6).all()


# --------------------------------------------------------------------------- the model

def _args(*extra: str):
    return train_flags.parse_args(["--maxlen", "20", "--hidden_units", "16", "--num_blocks", "2",
                            "--num_heads", "2", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def demo_data(demo_dir, tmp_path_factory):
    """The demo dataset (every feature group, multimodal 81, profiles) and a training split."""
    data = load_dataset(demo_dir, tmp_path_factory.mktemp("cache"))
    return data, setup.make_split(_args(), data)


def _model(data, *extra: str, seed: int = 0) -> BaseModel:
    """The model the flags describe. With --feature_fusion sum, the schema leaves out the
    continual features (sum fusion cannot take scalars; the data's other features stay)."""
    args = _args(*extra)
    setup.set_seed(seed)
    schema = data.schema.to_dict()
    if args.feature_fusion == "sum":
        schema = {**schema, "item_continual": [], "user_continual": []}
    return setup.build_model(args, schema, setup.feature_tensors(data),
                            data.itemnum, data.usernum)


def _batch(data, split, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch (with left padding and profile slots) as tensors."""
    args = _args()
    sampler = setup.make_sampler(args, data, split, seed=seed)
    batches = TrainBatches(data.seqs, split.train, args.maxlen, size, sampler, seed=seed)
    return train_step.to_device(next(iter(batches.epoch(1))), torch.device("cpu"))


def _assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, rel: float, name: str):
    """max |got - want| <= rel * max |want|: float sums taken in another order."""
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= rel * max(scale, 1e-12), f"{name}: max error {err:.3g}, scale {scale:.3g}"


def _reference_fuse(f, parts, dnn, relu):
    """The baseline's Linear (+ ReLU) over the concatenated parts, or with "sum" fusion their sum."""
    if f.fusion == "sum":
        return sum(parts)
    out = dnn(torch.cat(parts, -1))
    return torch.relu(out) if relu else out


def _reference_items(f, ids, relu=True):
    """The item part of every id, each token through itemdnn on its own features."""
    s = f.schema
    parts = [f.item_emb(ids)]
    parts += [f.sparse_emb[fid](f.item_sparse[ids, j]) for j, fid in enumerate(s["item_sparse"])]
    parts += [f.sparse_emb[fid](f.item_array[ids, j]).sum(-2)
              for j, fid in enumerate(s["item_array"])]
    parts += [f.emb_transform[fid](_host_table(f, fid)[ids]) for fid in s["mm_dims"]]
    parts += [f.item_continual[ids]] if s["item_continual"] else []
    return _reference_fuse(f, parts, getattr(f, "itemdnn", None), relu)


def _host_table(f, fid) -> torch.Tensor:
    """The whole multimodal table as a float32 tensor (the model gathers it per batch)."""
    return torch.from_numpy(np.array(f.host_mm.tables[fid], dtype=np.float32))


def _reference_users(f, ids, relu=True):
    s = f.schema
    parts = [f.user_emb(ids)]
    parts += [f.sparse_emb[fid](f.user_sparse[ids, j]) for j, fid in enumerate(s["user_sparse"])]
    parts += [f.sparse_emb[fid](f.user_array[ids, j]).sum(-2)
              for j, fid in enumerate(s["user_array"])]
    parts += [f.user_continual[ids]] if s["user_continual"] else []
    return _reference_fuse(f, parts, getattr(f, "userdnn", None), relu)


def _reference_positions(model, seq):
    """Position ids slot by slot: the slot number ("slot"), or the count of real tokens up to
    and including this one ("from_start"); 0 on padding."""
    b, n = seq.shape
    out = torch.zeros(b, n, dtype=torch.long)
    for r in range(b):
        count = 0
        for i in range(n):
            if seq[r, i] != 0:
                count += 1
                out[r, i] = i + 1 if model.positions == "slot" else count
    return out


def _reference_forward(model, seq, token_type, pos, neg, relu=True):
    """The baseline's forward, slot by slot: feat2emb (item part + user part on EVERY slot),
    scale, positions, causal blocks with a plain softmax, last LayerNorm, dot logits."""
    f, (b, n) = model.features, seq.shape
    item_ids = torch.where(token_type == TOKEN_ITEM, seq, 0)
    user_ids = torch.where(token_type == TOKEN_PROFILE, seq, 0)
    x = (_reference_items(f, item_ids, relu) + _reference_users(f, user_ids, relu)) \
        * model.hidden ** 0.5
    x = x + model.pos_emb(_reference_positions(model, seq))
    allowed = torch.zeros(b, 1, n, n, dtype=torch.bool)
    for r in range(b):
        for i in range(n):
            allowed[r, 0, i, i] = True
            for j in range(i + 1):
                allowed[r, 0, i, j] |= bool(seq[r, j] != 0)

    def mha(layer, x, keys=None):
        h, keys = layer.num_heads, x if keys is None else keys
        split = lambda t: t.view(b, n, h, -1).transpose(1, 2)  # noqa: E731
        out = _plain_attention(split(layer.q_linear(x)), split(layer.k_linear(keys)),
                               split(layer.v_linear(keys)), allowed)
        return layer.out_linear(out.transpose(1, 2).reshape(b, n, -1))

    def ffn(layer, x):
        return layer.conv2(torch.relu(layer.conv1(x)))

    for attn_ln, attn, ffn_ln, ff in zip(model.attention_layernorms, model.attention_layers,
                                         model.forward_layernorms, model.forward_layers):
        if model.block == "pre_ln":
            x = x + mha(attn, attn_ln(x))
            x = x + ffn(ff, ffn_ln(x))
        elif model.block == "sasrec":  # pmixer's SASRec: Q = LN(x); x = Q + MHA(Q, x, x); ...
            q = attn_ln(x)
            x = ffn_ln(q + mha(attn, q, keys=x))
            x = x + ffn(ff, x)
        else:
            x = attn_ln(x + mha(attn, x))
            x = ffn_ln(x + ffn(ff, x))
    feats = model.last_layernorm(x)
    return ((feats * _reference_items(f, pos, relu)).sum(-1),
            (feats * _reference_items(f, neg, relu)).sum(-1))


@pytest.mark.parametrize("extra", [(), ("--norm_first",), ("--block", "sasrec"),
                                   ("--block", "sasrec", "--attention_impl", "sdpa"),
                                   ("--attention_impl", "sdpa"),
                                   ("--no-dnn_relu",), ("--positions", "from_start"),
                                   ("--feature_fusion", "sum", "--init", "normal")])
def test_forward_equals_per_token_reference(demo_data, extra):
    data, split = demo_data
    model = _model(data, *extra).eval()
    batch = _batch(data, split, size=8)
    seq, token_type = batch["seq"], batch["token_type"]
    assert (seq == 0).any() and (token_type == TOKEN_PROFILE).any()  # padding and profiles
    with torch.no_grad():
        got = model(seq, token_type, batch["pos"], batch["neg"])
        want = _reference_forward(model, seq, token_type, batch["pos"], batch["neg"],
                                  relu="--no-dnn_relu" not in extra)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    items = model.features.items(torch.arange(1, data.itemnum + 1))
    # the baseline's ReLU keeps item vectors non-negative; without it they take both signs
    assert (items.min() < 0) == ("--no-dnn_relu" in extra or "sum" in extra)


@pytest.mark.parametrize("block", ["post_ln", "pre_ln", "sasrec"])
def test_newest_slot_alone_equals_the_full_forward(demo_data, block):
    """predict computes only the newest slot in the last block: the same vector as the full pass."""
    data, split = demo_data
    model = _model(data, "--num_blocks", "2", "--block", block).eval()
    batch = _batch(data, split, size=8)
    seq, token_type = batch["seq"], batch["token_type"]
    with torch.no_grad():
        item_part = model._item_lookup(seq * (token_type == TOKEN_ITEM))
        full = model.log2feats(seq, token_type, item_part)[:, -1]
        newest = model.predict(seq, token_type)
    torch.testing.assert_close(newest, full, rtol=1e-5, atol=1e-5)


def test_item_lookup_whole_catalogue_equals_per_token(demo_data):
    data, _ = demo_data
    model = _model(data)
    rows = model.features.item_sparse.shape[0]
    ids = torch.randint(0, rows, (3, 4, rows // 6))
    assert ids.numel() >= rows  # _item_lookup takes the whole-catalogue pass
    weight = torch.randn(*ids.shape, model.hidden)
    grads = []
    for lookup in (model._item_lookup, model.features.items):
        model.zero_grad()
        out = lookup(ids)
        (out * weight).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        grads[-1]["out"] = out.detach()
    whole, per_token = grads
    assert whole.keys() == per_token.keys()
    for key in whole:  # sums over many rows in another order: compare to the tensor's scale
        _assert_close_to_scale(whole[key], per_token[key], 1e-5, key)
    small = ids[0, :1, :5]  # fewer lookups than rows: the per-token pass
    torch.testing.assert_close(model._item_lookup(small), model.features.items(small))


def test_sparse_and_dense_embeddings_take_the_same_first_step(demo_data):
    """Same seed, same batch: the same loss and gradients; after one step the dense parameters
    agree, untouched table rows stay as they were in both, and touched rows agree wherever the
    gradient is well above Adam's eps. (SparseAdam adds eps before the bias correction, Adam
    after it: at step t SparseAdam's effective eps is eps / sqrt(1 - beta2^t), 7x Adam's at
    step 1 with beta2 0.98, so updates of gradients near 1e-7 differ by design.)"""
    data, split = demo_data
    batch = _batch(data, split, size=3)
    runs = []
    for extra in ((), ("--sparse_embeddings",)):
        args = _args(*extra)
        model = _model(data, *extra).train()
        optimizer = optim.build_optimizer(model, args.lr)
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        torch.manual_seed(5)  # the same dropout masks
        loss = train_step.compute_loss(model, batch, args, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = {k: p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
                 for k, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        steps = {k: p.detach() - before[k] for k, p in model.named_parameters()}
        runs.append((loss.item(), grads, steps, model))
    (dense_loss, dense_grads, dense_steps, dense), (sparse_loss, sparse_grads, sparse_steps,
                                                     sparse) = runs
    rows = dense.features.item_sparse.shape[0]
    assert 3 * batch["seq"].numel() < rows  # both take _item_lookup's per-token pass
    tables = {k for k, p in sparse.named_parameters() if any(p is q for q in
                                                               sparse.sparse_parameters())}
    assert "features.item_emb.weight" in tables and sparse.item_emb.weight.grad.is_sparse
    assert sparse_loss == pytest.approx(dense_loss, rel=1e-6)
    lr = _args().lr
    for name, grad in dense_grads.items():
        _assert_close_to_scale(sparse_grads[name], grad, 1e-6, name)
        d, s = dense_steps[name], sparse_steps[name]
        if name not in tables:
            _assert_close_to_scale(s, d, 1e-5, name)
            continue
        assert (d[grad == 0] == 0).all() and (s[grad == 0] == 0).all(), name
        big = grad.abs() > 1e-5
        assert big.any() and ((d - s)[big].abs() <= 0.01 * lr).all(), name
        assert ((d.sign() == s.sign()) | (grad == 0)).all(), name


def test_bf16_autocast_forward_is_close_to_fp32(demo_data):
    data, split = demo_data
    model = _model(data).eval()
    batch = _batch(data, split, size=8)
    inputs = [batch[k] for k in ("seq", "token_type", "pos", "neg")]
    with torch.no_grad():
        fp32 = model(*inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(*inputs)
    for a, b in zip(fp32, bf16):
        assert torch.isfinite(b).all() and not torch.equal(a, b.float())  # autocast took effect
        err = (a - b.float()).abs().max().item()
        assert err <= 0.05 * a.abs().max().item() + 0.05, err


@pytest.mark.parametrize("extra", [(), ("--sparse_embeddings",), ("--attention_impl", "sdpa"),
                                   ("--attention_impl", "fast_full"), ("--feature_fusion", "sum")])
def test_step_flops_matches_torch_flop_counter(demo_data, extra):
    """flops.step_flops against torch's counter of the matrix products a step executes. The
    counter sees no dot-product logits (elementwise), and no input gradient where the input
    needs none (multimodal vectors, a buffer): those two terms are taken out of the count."""
    data, split = demo_data
    model = _model(data, *extra).train()
    batch = _batch(data, split, size=8)
    b, n = batch["seq"].shape
    with FlopCounterMode(display=False) as counter:
        loss = train_step.compute_loss(model, batch, _args(*extra), None)
        loss.backward()
    # the per-token path projects each distinct item's multimodal rows once
    distinct = len(torch.unique(torch.stack([batch["seq"] * (batch["token_type"] == 1),
                                             batch["pos"], batch["neg"]])))
    counted = flops.step_flops(model, b, n, mm_rows=distinct)
    rows = model.features.item_sparse.shape[0]
    if rows > 3 * b * n or model.features.item_emb.sparse:
        rows = distinct
    mm_input_grad = sum(2 * rows * lin.in_features * model.hidden
                        for lin in model.features.emb_transform.values())
    logits = 3 * 2 * 2 * b * n * model.hidden
    assert counted - logits - mm_input_grad == counter.get_total_flops()


# --------------------------------------------------------------------------- the tools

class _ProfiledOps:
    """A stand-in for benchmarks.cases.Case whose step is a known set of ops."""
    device = torch.device("cpu")

    def __init__(self, layer_norm: bool):
        self.layer_norm = layer_norm
        self.x, self.w = torch.randn(512, 64), torch.randn(64, 64)

    def step(self) -> dict:
        start = time.perf_counter()
        y = self.x @ self.w
        if self.layer_norm:
            torch.nn.functional.layer_norm(y, (64,))
        y.mul(2).add(1)  # elementwise work: in the step, not in the floor
        return {"model": time.perf_counter() - start}


def test_profile_step_counts_only_the_floor_ops_in_the_floor():
    with_norm = flops.profile_step(_ProfiledOps(layer_norm=True), steps=2)
    without = flops.profile_step(_ProfiledOps(layer_norm=False), steps=2)
    assert with_norm.matmul_s > 0 and with_norm.floor_s > 0
    assert without.floor_s == 0 and without.floor_to_matmul == 1.0
    assert 1 < with_norm.floor_to_matmul < with_norm.model_to_matmul


def test_bench_runs_on_demo_and_synthetic_data(demo_cache, tmp_path):
    out = tmp_path / "bench.json"
    result = bench.bench(["--demo", "--cache_dir", str(demo_cache), "--demo_users", "300",
                          "--demo_items", "200", "--maxlen", "10", "--hidden_units", "8",
                          "--num_blocks", "1", "--batch_size", "32", "--steps", "2",
                          "--warmup", "1", "--compare_attention", "--device", "cpu",
                          "--peak_size", "256",
                          "--json", str(out)])
    for key in ("train_seq_per_s", "target_tokens_per_s", "mfu", "achieved_gflops", "peak_gflops",
                "outside_model_share", "eval_seconds", "peak_rss_mb", "step_ms_median", "config",
                "input_seq_per_s", "input_wait_share"):
        assert key in result, key
    assert 0 < result["mfu"] and 0 <= result["outside_model_share"] <= 1
    # the matrix products are part of the step: the profiled time is positive and below the
    # step's (at this toy size they are a small part of it), so the ceiling is above the MFU
    assert 0 < result["matmul_ms_per_step"] < result["step_ms_median"]
    assert result["mfu"] < result["mfu_ceiling"]
    assert all(c["model_to_matmul"] > 1 for c in result["cases"])
    # the floor is part of the step: above the matrix products alone, below the whole step
    assert all(0 < c["floor_ms_per_step"] < c["model_ms_median"] for c in result["cases"])
    assert all(1 < c["floor_to_matmul"] < c["model_to_matmul"] for c in result["cases"])
    assert result["config"]["maxlen"] == 10 and result["config"]["num_heads"] == 1  # paper default
    assert len(result["cases"]) == len(ATTENTION_IMPLS) and out.is_file()
    assert any(k.startswith("speedup attn=fast vs attn=sdpa") for k in result["ratios"])
    assert any(k.startswith("speedup attn=fast vs attn=fast_full") for k in result["ratios"])
    assert any(k.startswith("speedup attn=fast vs attn=autograd") for k in result["ratios"])
    synthetic = bench.bench(["--synthetic_items", "500", "3000", "--synthetic_users", "50",
                             "--maxlen", "10", "--hidden_units", "8", "--batch_size", "16",
                             "--steps", "1", "--warmup", "0", "--sparse_embeddings", "--no-eval",
                             "--device", "cpu", "--peak_size", "256"])
    assert [c["label"] for c in synthetic["cases"]] == ["items=500 sparse fp32 attn=fast",
                                                        "items=3000 sparse fp32 attn=fast"]
    assert "eval_seconds" not in synthetic and synthetic["data"]["items"] == 500
    assert set(result["input_seq_per_s_by_workers"]) == {0, 1} and result["input_seq_per_s"] > 0
    inputs = bench.bench(["--synthetic_items", "500", "--synthetic_users", "50", "--maxlen", "10",
                          "--batch_size", "16", "--input_only", "--input_workers", "2",
                          "--input_batches", "3", "--device", "cpu"])
    assert set(inputs["input_seq_per_s_by_workers"]) == {0, 2} and "cases" not in inputs


def test_gpu_check_smoke_on_cpu(demo_cache, capsys):
    result = gpu_check.check(["--device", "cpu", "--steps", "20", "--cache_dir", str(demo_cache),
                              "--demo_users", "300", "--demo_items", "200", "--maxlen", "10",
                              "--hidden_units", "8", "--batch_size", "32", "--peak_size", "256"])
    assert set(result) == {"fp32", "bf16"}
    for r in result.values():
        assert r["finite"] and r["train_seq_per_s"] > 0 and r["eval_seconds"] > 0
    assert "seq/s" in capsys.readouterr().out


def test_make_large_data_writes_what_orjson_writes(tmp_path):
    import pickle

    import orjson

    import make_large_data

    info = make_large_data.write_large_v1(tmp_path / "data", users=40, mean_items=9,
                                          num_items=120, seed=0, chunk_users=7)
    raw = (tmp_path / "data" / "seq.jsonl").read_bytes()
    lines = raw.splitlines(keepends=True)
    offsets = pickle.loads((tmp_path / "data" / "seq_offsets.pkl").read_bytes())
    assert len(lines) == len(offsets) == 40 and info["seq_jsonl_bytes"] == len(raw)
    assert offsets == np.cumsum([0] + [len(line) for line in lines[:-1]]).tolist()
    for line in lines:
        records = orjson.loads(line)
        assert orjson.dumps(records) + b"\n" == line  # compact, no stray bytes
        assert [r[5] for r in records] == sorted(r[5] for r in records)
        assert records[-1][1] is None and isinstance(records[-1][2], dict)  # profile last
    data = load_dataset(tmp_path / "data", tmp_path / "cache")
    assert len(data.seqs.tok_id) == info["tokens"] and data.itemnum == 120
    assert data.schema.item_sparse == ["100", "101"] and data.schema.user_sparse == ["103", "104"]
