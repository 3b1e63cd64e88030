"""Remove each user's history from its recommendations (infer.py --exclude_seen).

The competition's targets are items new to the user (the next click after the reference time),
so re-recommending what the user already interacted with wastes slots. Two ways, same result:
- SeenMask: the exact top-k sets a user's seen candidates to -inf in each score block, so k
  stays k (used whenever every user keeps at least k unseen candidates);
- drop_seen, for any top-k (faiss too): search k + (the most candidates one user has seen) and
  drop the seen ones afterwards. On the competition's scale the larger k made the exact top-k
  3.0x slower (k 37 against 10, benchmarks/inference.py --compare_seen, docs/speed.md).
"""
from __future__ import annotations

import numpy as np

from dataset import TOKEN_ITEM
from inputs.unique import sorted_unique


def seen_candidates(seqs, item_emb_id: np.ndarray, cand_rows: np.ndarray) -> np.ndarray:
    """-> (M, 2) int64 distinct (line, candidate index) pairs: the candidate's item (its id
    embedding row, 0 for unseen OIDs, which never match) occurs in the line's items."""
    cand_item = np.asarray(item_emb_id)[cand_rows]
    index_of = np.full(len(item_emb_id) + 1, -1, np.int64)
    warm = np.flatnonzero(cand_item > 0)
    index_of[cand_item[warm]] = warm
    is_item = np.asarray(seqs.tok_type) == TOKEN_ITEM
    line = np.repeat(np.arange(seqs.num_lines), np.diff(np.asarray(seqs.line_offsets)))
    cand = index_of[np.asarray(item_emb_id)[np.asarray(seqs.tok_id)[is_item]]]
    hit = cand >= 0
    # one int64 key per pair, ordered as (line, candidate): on 10M pairs 0.6 s, against 12 s
    # for np.unique(axis=0) (numpy 2.4; inputs/unique.py)
    keys = sorted_unique(line[is_item][hit] * len(cand_rows) + cand[hit])
    return np.stack([keys // len(cand_rows), keys % len(cand_rows)], 1).astype(np.int64)


def extra_k(pairs: np.ndarray, num_lines: int) -> int:
    """How many more results to search so that k unseen ones remain for every line."""
    return int(np.bincount(pairs[:, 0], minlength=num_lines).max(initial=0)) if len(pairs) else 0


def drop_seen(top: np.ndarray, pairs: np.ndarray, num_candidates: int, k: int) -> np.ndarray:
    """top (U, K') candidate indices, best first -> (U, min(k, K')): seen ones moved behind the
    unseen (kept only when a user has fewer than k unseen candidates), order otherwise kept."""
    top = np.asarray(top, np.int64)
    keys = pairs[:, 0] * num_candidates + pairs[:, 1]
    lines = np.arange(len(top), dtype=np.int64)[:, None]
    is_seen = np.isin(lines * num_candidates + top, keys)
    order = np.argsort(is_seen, axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)[:, :k]


def masking_fits(pairs: np.ndarray, num_lines: int, num_candidates: int, k: int) -> bool:
    """Whether every line keeps at least k unseen candidates: then the best k of the scores with
    the seen ones at -inf are exactly drop_seen's k (else drop_seen, which ranks seen ones last
    by score, is needed)."""
    return num_candidates - extra_k(pairs, num_lines) >= k


class SeenMask:
    """The seen (line, candidate) pairs as the chunked top-k masks with them: for a batch of
    lines, the pairs ordered by candidate, so that each candidate chunk is one slice."""

    def __init__(self, pairs: np.ndarray, num_lines: int):
        self.pairs = np.asarray(pairs, np.int64)  # ordered by (line, candidate): seen_candidates
        self.line_start = np.searchsorted(self.pairs[:, 0], np.arange(num_lines + 1))

    def batch(self, first: int, stop: int, chunk_starts: np.ndarray):
        """Lines first..stop-1 and chunk start columns (ascending, with the end appended) ->
        (rows relative to first, candidate columns, bounds): chunk i's pairs are
        [bounds[i], bounds[i + 1])."""
        p = self.pairs[self.line_start[first]:self.line_start[stop]]
        p = p[np.argsort(p[:, 1], kind="stable")]
        return p[:, 0] - first, p[:, 1], np.searchsorted(p[:, 1], chunk_starts)
