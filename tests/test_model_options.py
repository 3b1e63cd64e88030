"""The model's options beyond the baseline, each against its definition:
--init normal, --feature_fusion sum, --positions from_start (their forward is also checked
against the per-token reference in test_speed_paths)."""
from __future__ import annotations

import pytest
import torch

from model import BaseModel

ITEMS, USERS, HIDDEN = 40, 30, 64


def _schema(**kinds) -> dict:
    schema = {f"{side}_{kind}": [] for side in ("item", "user")
              for kind in ("sparse", "array", "continual")}
    schema.update(vocab={}, mm_dims={})
    for key, fids in kinds.items():
        schema[key] = list(fids)
        schema["vocab"].update({fid: 5 for fid in fids if "continual" not in key})
    return schema


def _tables(schema: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = {}
    for side, rows in (("item", ITEMS + 1), ("user", USERS + 1)):
        t[f"{side}_sparse"] = torch.randint(1, 6, (rows, len(schema[f"{side}_sparse"])), generator=g)
        t[f"{side}_array"] = torch.randint(0, 6, (rows, len(schema[f"{side}_array"]), 3), generator=g)
        t[f"{side}_continual"] = torch.rand(rows, len(schema[f"{side}_continual"]), generator=g)
        for name in (f"{side}_sparse", f"{side}_array", f"{side}_continual"):
            t[name][0] = 0  # row 0 is padding
    return t


def _model(schema=None, **kw) -> BaseModel:
    schema = schema or _schema()
    torch.manual_seed(0)
    return BaseModel(schema, _tables(schema), ITEMS, USERS, hidden_units=HIDDEN, num_blocks=2,
                     maxlen=100, **kw)


def test_normal_init_draws_matrices_from_n_0_002_and_zeroes_biases():
    model = _model(init="normal", feature_fusion="sum")
    matrices = torch.cat([p.detach().flatten() for name, p in model.named_parameters()
                          if p.dim() >= 2])
    n = matrices.numel() - 3 * HIDDEN  # less the three zero padding rows
    assert matrices.abs().max() < 0.02 * 6
    # std of n draws from N(0, 0.02): relative error ~ 1 / sqrt(2n) (< 0.002 here)
    assert abs(matrices.std().item() * (matrices.numel() / n) ** 0.5 - 0.02) < 0.02 * 0.01
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        if "layernorm" in name and name.endswith("weight"):
            assert torch.all(p == 1), name
    assert torch.all(model.features.item_emb.weight[0] == 0)
    assert torch.all(model.pos_emb.weight[0] == 0)


def test_xavier_init_is_the_default():
    model = _model()
    w = model.attention_layers[0].q_linear.weight
    assert abs(w.std().item() - (2 / (HIDDEN + HIDDEN)) ** 0.5) < 0.01
    assert model.attention_layers[0].q_linear.bias.abs().max() > 0  # torch's default bias init


def test_sum_fusion_adds_id_and_feature_embeddings():
    schema = _schema(item_sparse=["a"], item_array=["b"], user_sparse=["c"])
    model = _model(schema, feature_fusion="sum")
    f = model.features
    assert not hasattr(f, "itemdnn") and not hasattr(f, "userdnn")
    ids = torch.tensor([[0, 3, 7], [ITEMS, 1, 0]])
    want = (f.item_emb(ids) + f.sparse_emb["a"](f.item_sparse[ids, 0])
            + f.sparse_emb["b"](f.item_array[ids, 0]).sum(-2))
    torch.testing.assert_close(f.items(ids), want)
    assert torch.all(f.items(torch.tensor([0])) == 0)  # padding embeds to exactly 0
    users = torch.tensor([0, 5])
    torch.testing.assert_close(f.users(users),
                               f.user_emb(users) + f.sparse_emb["c"](f.user_sparse[users, 0]))
    assert torch.all(f.users(torch.tensor([0])) == 0)


def test_sum_fusion_on_id_only_data_is_the_id_embedding():
    f = _model(feature_fusion="sum").features
    ids = torch.arange(ITEMS + 1)
    assert torch.equal(f.items(ids), f.item_emb(ids))


def test_sum_fusion_refuses_continual_features():
    with pytest.raises(ValueError, match=r"\['x'\] are continual scalars"):
        _model(_schema(item_continual=["x"]), feature_fusion="sum")


def test_position_ids_by_slot_and_from_start():
    nonpad = torch.tensor([[False, False, True, True, True], [True] * 5, [False] * 4 + [True]])
    slot = _model()._position_ids(nonpad)
    from_start = _model(positions="from_start")._position_ids(nonpad)
    assert slot.tolist() == [[0, 0, 3, 4, 5], [1, 2, 3, 4, 5], [0, 0, 0, 0, 5]]
    assert from_start.tolist() == [[0, 0, 1, 2, 3], [1, 2, 3, 4, 5], [0, 0, 0, 0, 1]]


def _sequences():
    seq = torch.tensor([[0, 0, 3, 7, 9], [0, 5, 2, 2, 8]])
    return seq, (seq != 0).long(), torch.tensor([[0, 0, 7, 9, 4], [0, 2, 2, 8, 1]])


@pytest.mark.parametrize("schema", [_schema(), _schema(item_sparse=["100"])])
def test_separate_output_embedding_scores_items_with_rows_of_its_own(schema):
    """Scored items (pos, neg, shared candidates, evaluation) are output_emb rows; the input
    tokens are the tied model's, untouched by output_emb."""
    model = _model(schema, output_embedding="separate", feature_fusion="sum").eval()
    seq, token_type, pos = _sequences()
    neg, cand = pos.flip(1), torch.tensor([1, 6, 40])
    with torch.no_grad():
        feats, pos_v, neg_v, cand_v = model(seq, token_type, pos, neg, cand, vectors=True)
        rows = model.output_emb.weight
        torch.testing.assert_close(pos_v, rows[pos])
        torch.testing.assert_close(neg_v, rows[neg])
        torch.testing.assert_close(cand_v, rows[cand])
        torch.testing.assert_close(model.embed_items(cand), rows[cand])
        pos_logits, _ = model(seq, token_type, pos, neg)
        torch.testing.assert_close(pos_logits, (feats * rows[pos]).sum(-1))
        model.output_emb.weight.mul_(3.0)  # the scoring rows change; the inputs do not
        assert torch.equal(model(seq, token_type, pos, neg, vectors=True)[0], feats)
    assert torch.all(rows[0] == 0)  # padding
    tied = _model(schema, feature_fusion="sum").eval()
    assert tied.output_emb is None
    with torch.no_grad():
        torch.testing.assert_close(tied.embed_items(cand), tied.features.items(cand))


def test_separate_output_embedding_scores_cold_items_with_zeros():
    """Inference maps items unseen in training to id row 0: they score 0, not another item."""
    schema = _schema()
    tables = {**_tables(schema), "item_emb_id": torch.tensor([0] + list(range(1, ITEMS)) + [0])}
    model = BaseModel(schema, tables, ITEMS, USERS, hidden_units=HIDDEN, feature_fusion="sum",
                      output_embedding="separate")
    with torch.no_grad():
        vecs = model.embed_items(torch.tensor([3, ITEMS]))
    torch.testing.assert_close(vecs[0], model.output_emb.weight[3])
    assert torch.all(vecs[1] == 0)


def test_unknown_output_embedding_is_refused_with_the_flag_name():
    with pytest.raises(ValueError, match="--output_embedding"):
        _model(output_embedding="shared")
