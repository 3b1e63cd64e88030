"""Similarities between a sequence representation (query) and item representations.

Every similarity is an ``nn.Module`` with one interface, so the model, evaluation and
inference never branch on which one they hold:

- ``forward(query (..., D), items (..., D)) -> (...)``: pairwise scores (training logits);
- ``score_all(queries (B, D), items (N, D)) -> (B, N)``: every query against every item,
  in matrix products only (no ``(B, N, D)`` intermediate);
- ``query_vectors(queries (B, D)) -> (B, D')`` and ``item_vectors(items (N, D)) -> (N, D')``:
  an exact reduction to an inner product, ``query_vectors(q) @ item_vectors(v).T ==
  score_all(q, v)``, so an inner-product ANN index (faiss) can serve any similarity;
- ``scalars() -> dict[str, float]``: learnable scalars for TensorBoard.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

# Learnable weight (parameter name, initial value) of each term of AdaptiveSimilarity.
# The keys are the valid type names, so this dict is the single source of truth.
_TERM_WEIGHTS: dict[str, tuple[str, float]] = {
    "dot": ("alpha", 0.5),
    "cosine": ("beta", 0.3),
    "scaled": ("gamma", 0.2),
    "bilinear": ("delta", 0.2),
}
SIMILARITY_TYPES: tuple[str, ...] = tuple(_TERM_WEIGHTS)  # feeds argparse choices=
DEFAULT_SIMILARITY_TYPES: tuple[str, ...] = ("dot", "cosine", "scaled")
# The adaptive similarity's learned temperature is used clamped to this range: under a softmax
# loss an unbounded multiplier can grow until the logits overflow (or cross 0 and flip every
# ranking); outside the range its gradient is 0, so it stops there.
TEMPERATURE_RANGE: tuple[float, float] = (0.01, 100.0)

# Combines a query-side and an item-side tensor into scores: pairwise or all-pairs.
PairFn = Callable[[Tensor, Tensor], Tensor]


def _pairwise(a: Tensor, b: Tensor) -> Tensor:
    """a (..., D), b (..., D) broadcastable -> (...)."""
    return (a * b).sum(-1)


def _all_pairs(a: Tensor, b: Tensor) -> Tensor:
    """a (B, D), b (N, D) -> (B, N)."""
    return a @ b.T


def unit(x: Tensor, eps: float = 1e-8) -> Tensor:
    """x (..., D) -> x / (||x|| + eps), same shape and dtype.

    The norm is taken in at least float32: a bf16 sum of squares loses too many bits
    (and can overflow in fp16), which makes cosine scores noisy under autocast.
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)
    return (xf / (norm + eps)).to(x.dtype)


class SimilarityCalculator:
    """Pairwise reference similarities over the last dim, broadcasting leading dims."""

    @staticmethod
    def cosine_similarity(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
        """x (..., D), y (..., D) -> (...); eps keeps zero vectors at 0 instead of NaN."""
        return _pairwise(unit(x, eps), unit(y, eps))

    @staticmethod
    def scaled_dot_product(x: Tensor, y: Tensor) -> Tensor:
        """x (..., D), y (..., D) -> (...): x.y / sqrt(D)."""
        return _pairwise(x, y) / math.sqrt(x.shape[-1])

    @staticmethod
    def bilinear_similarity(x: Tensor, y: Tensor, weight_matrix: Tensor) -> Tensor:
        """x (..., D), y (..., D), weight_matrix (D, D) -> (...): x^T W y."""
        return _pairwise(x @ weight_matrix, y)


class DotSimilarity(nn.Module):
    """Plain inner product, bit-identical to the baseline's ``(query * items).sum(-1)``."""

    def forward(self, query: Tensor, items: Tensor) -> Tensor:
        """query (..., D), items (..., D) -> (...)."""
        return (query * items).sum(-1)

    def score_all(self, queries: Tensor, items: Tensor) -> Tensor:
        """queries (B, D), items (N, D) -> (B, N)."""
        return queries @ items.T

    def query_vectors(self, queries: Tensor) -> Tensor:
        """queries (B, D) -> (B, D): already an inner product."""
        return queries

    def item_vectors(self, items: Tensor) -> Tensor:
        """items (N, D) -> (N, D)."""
        return items

    def scalars(self) -> dict[str, float]:
        return {}


class CosineSimilarity(nn.Module):
    """Cosine of query and item, in [-1, 1]. Scores this narrow cannot separate items under a
    softmax unless the loss divides them by a low temperature (--tau 0.02-0.1, see
    docs/objectives.md); rankings do not depend on that temperature."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, query: Tensor, items: Tensor) -> Tensor:
        """query (..., D), items (..., D) -> (...)."""
        return _pairwise(unit(query, self.eps), unit(items, self.eps))

    def score_all(self, queries: Tensor, items: Tensor) -> Tensor:
        """queries (B, D), items (N, D) -> (B, N)."""
        return unit(queries, self.eps) @ unit(items, self.eps).T

    def query_vectors(self, queries: Tensor) -> Tensor:
        """queries (B, D) -> (B, D): unit vectors, so the inner product is the cosine."""
        return unit(queries, self.eps)

    def item_vectors(self, items: Tensor) -> Tensor:
        """items (N, D) -> (N, D)."""
        return unit(items, self.eps)

    def scalars(self) -> dict[str, float]:
        return {}


# Fixed (parameter-free) similarities by name; feeds argparse choices= of --similarity.
SIMILARITIES: dict[str, type[nn.Module]] = {"dot": DotSimilarity, "cosine": CosineSimilarity}


def check_similarity_types(similarity_types: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of type names; raise ValueError naming the valid ones."""
    types = tuple(similarity_types)
    valid = ", ".join(SIMILARITY_TYPES)
    unknown = [t for t in types if t not in _TERM_WEIGHTS]
    if unknown:
        raise ValueError(f"unknown similarity types {unknown}; valid: {valid}")
    if not types or len(set(types)) != len(types):
        raise ValueError(f"need a non-empty list without duplicates of: {valid}; got {list(types)}")
    return types


class AdaptiveSimilarity(nn.Module):
    """Learned mix of similarities: T * (alpha dot + beta cos + gamma dot/sqrt(D) + delta q^T W v).

    Only the chosen types' parameters exist, so the optimizer, checkpoints and
    TensorBoard never see dead weights.
    """

    def __init__(
        self,
        hidden_dim: int,
        similarity_types: Sequence[str] = DEFAULT_SIMILARITY_TYPES,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.similarity_types = check_similarity_types(similarity_types)
        self.hidden_dim = hidden_dim
        self.eps = eps
        self._sqrt_d = math.sqrt(hidden_dim)
        for t in self.similarity_types:
            name, init = _TERM_WEIGHTS[t]
            self.register_parameter(name, nn.Parameter(torch.tensor(init)))
        self.temperature = nn.Parameter(torch.tensor(1.0))
        if "bilinear" in self.similarity_types:
            # Identity start: the bilinear term begins as a plain dot product.
            self.bilinear_weight = nn.Parameter(torch.eye(hidden_dim))

    def _uses(self, t: str) -> bool:
        return t in self.similarity_types

    def _weight(self, t: str) -> Tensor:
        return getattr(self, _TERM_WEIGHTS[t][0])

    def _fused(self, q: Tensor, v: Tensor, pair: PairFn) -> Tensor:
        """Sum of the chosen terms, each written as pair(query side, item side).

        Sharing this between forward (pairwise) and score_all (all pairs) keeps the
        two formulas from drifting apart.
        """
        score = 0.0
        if self._uses("dot") or self._uses("scaled"):
            dot = pair(q, v)
            if self._uses("dot"):
                score = score + self._weight("dot") * dot
            if self._uses("scaled"):
                score = score + self._weight("scaled") * (dot / self._sqrt_d)
        if self._uses("cosine"):
            cos = pair(unit(q, self.eps), unit(v, self.eps))
            score = score + self._weight("cosine") * cos
        if self._uses("bilinear"):
            score = score + self._weight("bilinear") * pair(q @ self.bilinear_weight, v)
        return self.scale() * score

    def scale(self) -> Tensor:
        """The temperature as used: clamped to TEMPERATURE_RANGE (a 0-d tensor)."""
        return self.temperature.clamp(*TEMPERATURE_RANGE)

    def forward(self, query: Tensor, items: Tensor) -> Tensor:
        """query (..., D), items (..., D) broadcastable -> (...)."""
        return self._fused(query, items, _pairwise)

    def score_all(self, queries: Tensor, items: Tensor) -> Tensor:
        """queries (B, D), items (N, D) -> (B, N)."""
        return self._fused(queries, items, _all_pairs)

    def _has_linear_half(self) -> bool:
        # Terms linear in the raw item vector v (as opposed to v / ||v||).
        return any(self._uses(t) for t in ("dot", "scaled", "bilinear"))

    def query_vectors(self, queries: Tensor) -> Tensor:
        """queries (B, D) -> (B, D') with D' = D per half (linear in v, linear in v/||v||).

        For fixed q the score is linear in v and in v/(||v||+eps); q^T W v = (q W) . v.
        """
        parts = []
        if self._has_linear_half():
            lin = torch.zeros_like(queries)
            if self._uses("dot"):
                lin = lin + self._weight("dot") * queries
            if self._uses("scaled"):
                lin = lin + self._weight("scaled") * (queries / self._sqrt_d)
            if self._uses("bilinear"):
                lin = lin + self._weight("bilinear") * (queries @ self.bilinear_weight)
            parts.append(self.scale() * lin)
        if self._uses("cosine"):
            parts.append(self.scale() * self._weight("cosine") * unit(queries, self.eps))
        return torch.cat(parts, dim=-1)

    def item_vectors(self, items: Tensor) -> Tensor:
        """items (N, D) -> (N, D'), the item side matching query_vectors."""
        parts = []
        if self._has_linear_half():
            parts.append(items)
        if self._uses("cosine"):
            parts.append(unit(items, self.eps))
        return torch.cat(parts, dim=-1)

    def scalars(self) -> dict[str, float]:
        """Learnable scalars by name. ``.item()`` syncs the GPU: call only at log cadence."""
        names = [_TERM_WEIGHTS[t][0] for t in self.similarity_types] + ["temperature"]
        return {n: getattr(self, n).item() for n in names}


def build_similarity(
    hidden_dim: int,
    adaptive: bool,
    similarity_types: Sequence[str] = DEFAULT_SIMILARITY_TYPES,
    fixed: str = "dot",
) -> nn.Module:
    """The similarity a model uses: a learned mix of types when adaptive, else the fixed one
    named (SIMILARITIES: "dot", the baseline, or "cosine")."""
    if adaptive:
        return AdaptiveSimilarity(hidden_dim, similarity_types)
    if fixed not in SIMILARITIES:
        raise ValueError(f"unknown similarity {fixed!r}; valid: {', '.join(SIMILARITIES)}")
    return SIMILARITIES[fixed]()
