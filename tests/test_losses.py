"""objectives/losses.py against references: full cross-entropy, hand-computed logQ / gBCE values, chunked
against unchunked (values and gradients), accidental hits, per-row negatives, the adaptive
temperature clamp."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from objectives import losses
from objectives.losses import (BCE, GBCE, LOSSES, MASKED, Candidates, FullSoftmax, LossInputs,
                    SampledSoftmax, gbce_beta)
from similarity import AdaptiveSimilarity, CosineSimilarity, DotSimilarity, TEMPERATURE_RANGE

D, N, P = 6, 11, 7


def _data(seed: int = 0):
    """query (P, D), item table (N+1, D) (row 0 padding), positives (P,) in 1..N, float64."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(P, D, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(N + 1, D, generator=g, dtype=torch.float64, requires_grad=True)
    pos_ids = torch.randint(1, N + 1, (P,), generator=g)
    return query, items, pos_ids


def _all_items(query, items, pos_ids, similarity=None, tau=1.0, logq=None, seen=None, row=None,
               first_id=None):
    ids = torch.arange(1, N + 1)
    logq = torch.zeros(N, dtype=query.dtype) if logq is None else logq
    return LossInputs(similarity or DotSimilarity(), query, items[pos_ids], torch.ones(P,
                      dtype=query.dtype), tau, pos_ids=pos_ids,
                      cand=Candidates(ids, items[ids], logq, first_id), seen=seen, row=row,
                      num_items=N)


def _reference_ce(query, items, pos_ids, tau=1.0):
    """Cross-entropy over every item 1..N, the textbook formula."""
    logits = query @ items[1:].T / tau
    return F.cross_entropy(logits, pos_ids - 1)


def test_sampled_softmax_over_every_item_with_uniform_q_is_full_cross_entropy():
    query, items, pos_ids = _data()
    ref = _reference_ce(query, items, pos_ids, tau=0.5)
    got = SampledSoftmax()(_all_items(query, items, pos_ids, tau=0.5))
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    # Uniform Q with the correction on: every item's expected count is K * 1/N = 1, log 1 = 0.
    logq = torch.full((N,), math.log(N * (1.0 / N)), dtype=torch.float64)
    got_logq = SampledSoftmax()(_all_items(query, items, pos_ids, tau=0.5, logq=logq))
    assert got_logq.item() == pytest.approx(ref.item(), rel=1e-12)
    assert FullSoftmax()(_all_items(query, items, pos_ids, tau=0.5)).item() == \
        pytest.approx(ref.item(), rel=1e-12)


@pytest.mark.parametrize("first_id", [None, 1])  # hits by comparing ids / by index
@pytest.mark.parametrize("similarity", [DotSimilarity(), CosineSimilarity(),
                                        AdaptiveSimilarity(D).double()])
def test_chunked_full_softmax_equals_unchunked_values_and_gradients(monkeypatch, similarity,
                                                                    first_id):
    def run(chunk_scores, single_pass, reference=False):
        monkeypatch.setattr(losses, "CHUNK_SCORES", chunk_scores)
        monkeypatch.setattr(losses, "SINGLE_PASS_SCORES", single_pass)
        query, items, pos_ids = _data(seed=3)
        similarity.zero_grad()
        if reference:  # plain autograd through the textbook formula
            loss = F.cross_entropy(similarity.score_all(query, items[1:]) / 0.3, pos_ids - 1)
        else:
            loss = FullSoftmax()(_all_items(query, items, pos_ids, similarity, tau=0.3,
                                            first_id=first_id))
        loss.backward()
        params = [p.grad.clone() for p in similarity.parameters()]
        return [loss.detach(), query.grad, items.grad, *params]

    reference = run(1 << 30, 1 << 30, reference=True)
    whole = run(1 << 30, 1 << 30)  # one pass, softmax kept from forward
    chunked = run(2 * P, 0)  # 2 candidates per chunk: 6 chunks, recomputed in backward
    for got in (whole, chunked):
        for a, b in zip(got, reference):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_logq_correction_hand_computed():
    # One position: positive logit 2.0; candidates with logits 1.0 and 0.5, log expected
    # counts log 0.5 and log 2 (an over-drawn item is discounted, an under-drawn one boosted).
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    pos = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    cand = Candidates(torch.tensor([5, 6]), torch.tensor([[1.0, 3.0], [0.5, -1.0]],
                                                         dtype=torch.float64),
                      torch.log(torch.tensor([0.5, 2.0], dtype=torch.float64)))
    inp = LossInputs(DotSimilarity(), query, pos, torch.ones(1, dtype=torch.float64),
                     pos_ids=torch.tensor([4]), cand=cand)
    expected = -2.0 + math.log(math.exp(2.0) + math.exp(1.0) / 0.5 + math.exp(0.5) / 2.0)
    assert SampledSoftmax()(inp).item() == pytest.approx(expected, rel=1e-12)
    # in-batch: the positive's own log Q (log 3) is subtracted too
    inp.pos_logq = torch.log(torch.tensor([3.0], dtype=torch.float64))
    expected = -(2.0 - math.log(3.0)) + math.log(math.exp(2.0) / 3.0 + math.exp(1.0) / 0.5
                                                 + math.exp(0.5) / 2.0)
    assert SampledSoftmax()(inp).item() == pytest.approx(expected, rel=1e-12)


def test_accidental_hits_get_no_probability_mass():
    query, items, pos_ids = _data(seed=1)
    others = torch.tensor([1, 2, 3])
    hit_ids = torch.cat([others, pos_ids])  # every positive also appears as a candidate
    vecs = items[hit_ids]
    vecs.retain_grad()
    inp = LossInputs(DotSimilarity(), query, items[pos_ids], torch.ones(P, dtype=torch.float64),
                     pos_ids=pos_ids, cand=Candidates(hit_ids, vecs, torch.zeros(len(hit_ids),
                                                                                dtype=torch.float64)))
    logits = losses._masked_scores(query, vecs, -inp.cand.logq, hit_ids, pos_ids, None, None,
                                   1.0, torch.float64, None)
    probs = torch.softmax(torch.cat([torch.zeros(P, 1, dtype=torch.float64), logits], 1), 1)
    hit = pos_ids[:, None] == hit_ids[None, :]
    assert torch.all(probs[:, 1:][hit] == 0) and hit.any()
    # the loss equals the loss over the non-hit candidates only, position by position
    loss = SampledSoftmax()(inp)
    manual = []
    for p in range(P):
        keep = hit_ids != pos_ids[p]
        lp = query[p] @ items[pos_ids[p]]
        lc = items[hit_ids[keep]] @ query[p]
        manual.append(torch.logsumexp(torch.cat([lp[None], lc]), 0) - lp)
    assert loss.item() == pytest.approx(torch.stack(manual).mean().item(), rel=1e-12)


def test_history_mask_removes_the_rows_own_items():
    query, items, pos_ids = _data(seed=2)
    seen = torch.zeros(2, N + 1, dtype=torch.bool)
    seen[0, [1, 2, 3]] = True
    seen[1, [4]] = True
    row = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    inp = _all_items(query, items, pos_ids, seen=seen, row=row)
    for first in (None, 1):  # the softmax losses' fused path, hits by comparison or by index
        logits = losses._masked_scores(query, inp.cand.vecs, -inp.cand.logq, inp.cand.ids,
                                       pos_ids, seen, row, 1.0, torch.float64, first)
        for p in range(P):
            masked = set(torch.nonzero(logits[p] == MASKED).flatten().add(1).tolist())
            own = set(torch.nonzero(seen[row[p]]).flatten().tolist()) | {int(pos_ids[p])}
            assert masked == own


def test_gbce_beta_matches_the_paper_formula_by_hand():
    # ML-1M: N = 3416 items, K = 256, t = 0.75: alpha = 256/3415, beta = 1 - t + t * alpha
    alpha = 256 / 3415
    assert gbce_beta(256, 3416, 0.75) == pytest.approx(0.25 + 0.75 * alpha, rel=1e-12)
    assert gbce_beta(256, 3416, 0.0) == pytest.approx(1.0, rel=1e-12)
    assert gbce_beta(256, 3416, 1.0) == pytest.approx(alpha, rel=1e-12)


def _per_row(seed: int = 4, k: int = 5, seen=None, similarity=None):
    """B=2 rows of L=4 positions (row 1's first slot has no target), K negatives per row, some
    of them hits of the row's own positives."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(2, 4, D, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(N + 1, D, generator=g, dtype=torch.float64, requires_grad=True)
    pos_ids = torch.randint(1, N + 1, (2, 4), generator=g)
    ids = torch.randint(1, N + 1, (2, k), generator=g)
    ids[:, 0] = pos_ids[:, 1]  # an accidental hit in each row
    weight = torch.ones(2, 4, dtype=torch.float64)
    weight[1, 0] = 0
    inp = LossInputs(similarity or DotSimilarity(), query, items[pos_ids], weight,
                     pos_ids=pos_ids, cand=Candidates(ids, items[ids], torch.zeros(2, k)),
                     seen=seen, num_items=N)
    return inp, query, items, pos_ids, ids, weight


def test_gbce_with_t0_is_bce_with_the_same_negatives_and_hand_value():
    inp, query, items, pos_ids, ids, weight = _per_row()
    assert GBCE(5, t=0.0)(inp).item() == pytest.approx(BCE(5)(inp).item(), rel=1e-12)
    # gBCE by hand: mean over target positions of -beta log s(l0) - sum over the row's
    # non-hit negatives of log(1 - s(lk))
    sig, beta, per = torch.sigmoid, gbce_beta(5, N, 0.5), []
    for b in range(2):
        for t in range(4):
            if not weight[b, t]:
                continue
            l0 = query[b, t] @ items[pos_ids[b, t]]
            negs = [query[b, t] @ items[j] for j in ids[b] if j != pos_ids[b, t]]
            per.append(-beta * torch.log(sig(l0)) - sum(torch.log(1 - sig(v)) for v in negs))
    assert GBCE(5, t=0.5)(inp).item() == pytest.approx(torch.stack(per).mean().item(), rel=1e-10)


def test_per_row_negatives_score_only_their_own_row_and_mask_hits_and_history():
    seen = torch.zeros(2, N + 1, dtype=torch.bool)
    seen[0, [1, 2, 3]] = True
    sim = AdaptiveSimilarity(D, ["dot", "cosine", "scaled"])
    inp, query, items, pos_ids, ids, _ = _per_row(seed=7, k=6, seen=seen, similarity=sim)
    logits = losses.row_candidate_logits(inp)
    assert logits.shape == (2, 4, 6)
    for b in range(2):
        for t in range(4):
            for k in range(6):
                hit = ids[b, k] == pos_ids[b, t] or seen[b, ids[b, k]]
                expected = MASKED if hit else sim(query[b, t], items[ids[b, k]]).item()
                assert logits[b, t, k].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert (logits[:, 1, 0] == MASKED).all()  # the planted hits


def test_baseline_bce_per_position_matches_the_formula():
    query, items, pos_ids = _data(seed=5)
    neg_ids = torch.randint(1, N + 1, (P,), generator=torch.Generator().manual_seed(9))
    weight = torch.tensor([1, 1, 0, 1, 1, 1, 0], dtype=torch.float64)
    neg_weight = weight * torch.tensor([1, 1, 1, 0, 1, 1, 1], dtype=torch.float64)
    inp = LossInputs(DotSimilarity(), query, items[pos_ids], weight, neg=items[neg_ids],
                     neg_weight=neg_weight)
    lp, ln = (query * items[pos_ids]).sum(1), (query * items[neg_ids]).sum(1)
    expected = ((-F.logsigmoid(lp) * weight).sum() / weight.sum()
                + (-F.logsigmoid(-ln) * neg_weight).sum() / neg_weight.sum())
    assert BCE(1)(inp).item() == pytest.approx(expected.item(), rel=1e-12)
    assert BCE(1).per_position and not GBCE(1).per_position and not BCE(4).per_position
    assert BCE(4).per_row and GBCE(1).per_row and not BCE(1).per_row


def test_registry_builds_every_loss_with_defaults():
    for name, factory in LOSSES.items():
        loss = factory()
        assert callable(loss) and loss.all_items == (name == "full_softmax")


def test_adaptive_temperature_is_clamped_and_stops_there():
    sim = AdaptiveSimilarity(D, ["dot", "cosine"])
    with torch.no_grad():
        sim.temperature.fill_(1e6)
    q, v = torch.randn(3, D), torch.randn(4, D)
    assert sim.scale().item() == TEMPERATURE_RANGE[1]
    sim.score_all(q, v).sum().backward()
    assert sim.temperature.grad.item() == 0.0
    with torch.no_grad():
        sim.temperature.fill_(-5.0)
    assert sim.scale().item() == pytest.approx(TEMPERATURE_RANGE[0])  # never crosses 0 (a flipped ranking)


def test_cosine_similarity_contract():
    sim = CosineSimilarity()
    q, v = torch.randn(3, D, dtype=torch.float64), torch.randn(5, D, dtype=torch.float64)
    all_pairs = sim.score_all(q, v)
    torch.testing.assert_close(all_pairs, sim(q[:, None, :], v[None, :, :]))
    torch.testing.assert_close(all_pairs, sim.query_vectors(q) @ sim.item_vectors(v).T)
    torch.testing.assert_close(all_pairs, F.cosine_similarity(q[:, None], v[None], dim=-1))
    assert sim(torch.zeros(D), torch.ones(D)).item() == 0.0


def test_softmax_under_bf16_autocast_is_close_to_fp32():
    query, items, pos_ids = _data(seed=6)
    query32, items32 = query.detach().float(), items.detach().float()
    fp32 = FullSoftmax()(_all_items(query32, items32, pos_ids))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = FullSoftmax()(_all_items(query32, items32, pos_ids))
    assert bf16.dtype == torch.float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=2e-2)
