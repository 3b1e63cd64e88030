"""Contract and parity tests for similarity.py, looped over every subset of types."""

from __future__ import annotations

import itertools
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from similarity import (  # noqa: E402
    DEFAULT_SIMILARITY_TYPES,
    SIMILARITY_TYPES,
    TEMPERATURE_RANGE,
    AdaptiveSimilarity,
    DotSimilarity,
    SimilarityCalculator,
    build_similarity,
)

D = 8
EPS = 1e-8
WEIGHT_NAMES = {"dot": "alpha", "cosine": "beta", "scaled": "gamma", "bilinear": "delta"}
SUBSETS = [
    combo for r in range(1, len(SIMILARITY_TYPES) + 1)
    for combo in itertools.combinations(SIMILARITY_TYPES, r)
]


def _subset_id(types: tuple[str, ...]) -> str:
    return "+".join(types)


def _make(types: tuple[str, ...], randomise: bool = False, seed: int = 0) -> AdaptiveSimilarity:
    """Float64 module; randomise moves every parameter off its initial value."""
    sim = AdaptiveSimilarity(D, types, eps=EPS).double()
    if randomise:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in sim.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return sim


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _reference(sim: AdaptiveSimilarity, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The fused score written out directly: q (..., D), v (..., D) -> (...)."""
    types = sim.similarity_types
    dot = torch.einsum("...d,...d->...", q, v)
    qn = q / (q.norm(dim=-1, keepdim=True) + EPS)
    vn = v / (v.norm(dim=-1, keepdim=True) + EPS)
    total = torch.zeros_like(dot)
    if "dot" in types:
        total += sim.alpha * dot
    if "cosine" in types:
        total += sim.beta * torch.einsum("...d,...d->...", qn, vn)
    if "scaled" in types:
        total += sim.gamma * dot / math.sqrt(D)
    if "bilinear" in types:
        total += sim.delta * torch.einsum("...i,ij,...j->...", q, sim.bilinear_weight, v)
    return sim.temperature.clamp(*TEMPERATURE_RANGE) * total


@pytest.mark.parametrize("types", SUBSETS, ids=_subset_id)
def test_parameters_exist_and_get_gradients_only_for_chosen_types(types):
    sim = _make(types)
    expected = {WEIGHT_NAMES[t] for t in types} | {"temperature"}
    if "bilinear" in types:
        expected.add("bilinear_weight")
    assert {n for n, _ in sim.named_parameters()} == expected
    for name in set(WEIGHT_NAMES.values()) - expected:
        assert not hasattr(sim, name)

    q, v = _rand(3, 5, D, seed=1), _rand(3, 5, D, seed=2)
    # Random loss weights so no gradient cancels by symmetry.
    (sim(q, v) * _rand(3, 5, seed=3)).sum().backward()
    for name, p in sim.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("randomise", [False, True], ids=["init", "random"])
@pytest.mark.parametrize("types", SUBSETS, ids=_subset_id)
def test_forward_matches_direct_formula(types, randomise):
    sim = _make(types, randomise)
    q, v = _rand(4, 6, D, seed=1), _rand(4, 6, D, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(sim(q, v), _reference(sim, q, v))
        # Broadcasting: one query per row against several items.
        torch.testing.assert_close(sim(q[:, :1], v), _reference(sim, q[:, :1].expand_as(v), v))


@pytest.mark.parametrize("randomise", [False, True], ids=["init", "random"])
@pytest.mark.parametrize("types", SUBSETS, ids=_subset_id)
def test_score_all_equals_pairwise_forward(types, randomise):
    sim = _make(types, randomise)
    q, v = _rand(5, D, seed=1), _rand(7, D, seed=2)
    with torch.no_grad():
        all_scores = sim.score_all(q, v)
        assert all_scores.shape == (5, 7)
        torch.testing.assert_close(all_scores, sim(q[:, None, :], v[None, :, :]))


@pytest.mark.parametrize("randomise", [False, True], ids=["init", "random"])
@pytest.mark.parametrize("types", SUBSETS, ids=_subset_id)
def test_inner_product_reduction_is_exact(types, randomise):
    sim = _make(types, randomise, seed=7)
    q, v = _rand(5, D, seed=1), _rand(7, D, seed=2)
    with torch.no_grad():
        qv, iv = sim.query_vectors(q), sim.item_vectors(v)
        assert qv.shape[-1] == iv.shape[-1]
        torch.testing.assert_close(qv @ iv.T, sim.score_all(q, v), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("types", SUBSETS, ids=_subset_id)
def test_scalars_keys(types):
    keys = set(_make(types).scalars())
    assert keys == {WEIGHT_NAMES[t] for t in types} | {"temperature"}


def test_scalars_initial_values():
    sim = AdaptiveSimilarity(D, SIMILARITY_TYPES)
    assert sim.scalars() == pytest.approx(
        {"alpha": 0.5, "beta": 0.3, "gamma": 0.2, "delta": 0.2, "temperature": 1.0}
    )
    torch.testing.assert_close(sim.bilinear_weight.detach(), torch.eye(D))


def test_dot_similarity_is_bitwise_baseline():
    q, v = torch.randn(4, 9, 64), torch.randn(4, 9, 64)
    sim = DotSimilarity()
    assert torch.equal(sim(q, v), (q * v).sum(-1))
    assert list(sim.parameters()) == [] and sim.scalars() == {}
    qa, va = torch.randn(3, 64), torch.randn(11, 64)
    torch.testing.assert_close(sim.score_all(qa, va), (qa[:, None] * va[None]).sum(-1))
    torch.testing.assert_close(sim.query_vectors(qa) @ sim.item_vectors(va).T, sim.score_all(qa, va))


def test_cosine_bounded_and_safe_on_zero_vectors():
    torch.manual_seed(0)
    x = torch.randn(50, D) * torch.logspace(-3, 3, 50)[:, None]
    y = torch.cat([x[:10], -x[10:20], torch.randn(30, D)])
    cos = SimilarityCalculator.cosine_similarity(x, y)
    assert ((cos >= -1.0 - 1e-6) & (cos <= 1.0 + 1e-6)).all()
    # eps in the denominator pulls tiny vectors (norm ~1e-3) a few 1e-5 away from exactly +-1
    torch.testing.assert_close(cos[:10], torch.ones(10), atol=1e-4, rtol=0)
    torch.testing.assert_close(cos[10:20], -torch.ones(10), atol=1e-4, rtol=0)
    zero = SimilarityCalculator.cosine_similarity(torch.zeros(D), torch.randn(D))
    assert zero.item() == 0.0


def test_calculator_scaled_and_bilinear():
    x, y = _rand(3, 4, D, seed=1), _rand(3, 4, D, seed=2)
    dot = (x * y).sum(-1)
    torch.testing.assert_close(SimilarityCalculator.scaled_dot_product(x, y), dot / math.sqrt(D))
    eye = torch.eye(D, dtype=torch.float64)
    torch.testing.assert_close(SimilarityCalculator.bilinear_similarity(x, y, eye), dot)
    w = _rand(D, D, seed=3)
    expected = torch.einsum("bli,ij,blj->bl", x, w, y)
    torch.testing.assert_close(SimilarityCalculator.bilinear_similarity(x, y, w), expected)


def test_bilinear_at_identity_equals_dot():
    sim = _make(("bilinear",))
    with torch.no_grad():
        sim.delta.fill_(1.0)
    q, v = _rand(4, 6, D, seed=1), _rand(4, 6, D, seed=2)
    torch.testing.assert_close(sim(q, v), (q * v).sum(-1))


@pytest.mark.parametrize(
    "bad", [("dot", "cosin"), ("euclid",), (), ("dot", "dot")], ids=str
)
def test_bad_types_raise_listing_valid_names(bad):
    with pytest.raises(ValueError) as err:
        AdaptiveSimilarity(D, bad)
    for name in SIMILARITY_TYPES:
        assert name in str(err.value)


def test_build_similarity():
    assert isinstance(build_similarity(D, adaptive=False), DotSimilarity)
    sim = build_similarity(D, adaptive=True)
    assert isinstance(sim, AdaptiveSimilarity)
    assert sim.similarity_types == DEFAULT_SIMILARITY_TYPES
    sim = build_similarity(D, adaptive=True, similarity_types=["cosine", "bilinear"])
    assert sim.similarity_types == ("cosine", "bilinear")
    assert SIMILARITY_TYPES == ("dot", "cosine", "scaled", "bilinear")


def test_bf16_autocast_close_to_float32():
    sim = AdaptiveSimilarity(D, SIMILARITY_TYPES)
    q, v = torch.randn(4, 6, D), torch.randn(4, 6, D)
    with torch.no_grad():
        ref, ref_all = sim(q, v), sim.score_all(q[:, 0], v[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, low_all = sim(q, v), sim.score_all(q[:, 0], v[0])
    torch.testing.assert_close(low.float(), ref, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(low_all.float(), ref_all, rtol=5e-2, atol=5e-2)
