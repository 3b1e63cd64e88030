"""infer.py's exact top-k at scale: chunked over users and candidates, equal to one full topk,
with the score chunk bounding what is materialised; the chunk flags; benchmarks/inference.py."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import infer
from evaluation import seen as seen_filter
from similarity import build_similarity

ROOT = Path(__file__).resolve().parent.parent


class Recording(torch.nn.Module):
    """A similarity that records the shape of every score block it computes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.shapes = inner, []

    def score_all(self, queries, items):
        scores = self.inner.score_all(queries, items)
        self.shapes.append(tuple(scores.shape))
        return scores


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("batch_size,chunk", [(1, 10), (7, 13), (16, 100), (64, 999), (50, 5000)])
def test_chunked_topk_equals_full_topk_and_chunk_bounds_scores(adaptive, batch_size, chunk, prune):
    gen = torch.Generator().manual_seed(batch_size * 1000 + chunk)
    queries, items = torch.randn(53, 8, generator=gen), torch.randn(999, 8, generator=gen)
    sim = Recording(build_similarity(8, adaptive, ["dot", "cosine", "scaled", "bilinear"]))
    got = infer.topk_exact(sim, queries, items, k=10, batch_size=batch_size, chunk=chunk,
                           prune=prune)
    with torch.no_grad():
        want = sim.inner.score_all(queries, items).topk(10, dim=1).indices
    assert torch.equal(got, want)
    # every score block is at most (batch_size, chunk); together they cover U x N exactly once
    assert max(r for r, _ in sim.shapes) <= batch_size
    assert max(c for _, c in sim.shapes) <= max(chunk, 10)
    assert sum(r * c for r, c in sim.shapes) == len(queries) * len(items)


def merged_rows(monkeypatch) -> list:
    """Patch infer._merge to record how many rows each chunk merge handles."""
    rows, merge = [], infer._merge
    monkeypatch.setattr(infer, "_merge", lambda best_s, *a: rows.append(len(best_s)) or
                        merge(best_s, *a))
    return rows


@pytest.mark.parametrize("order", ["ascending", "descending", "random"])
def test_pruned_merge_skips_only_rows_that_cannot_improve(monkeypatch, order):
    # positive queries and items along one positive direction: item j's score rises with j for
    # every user, so ascending order improves every row in every chunk, descending in none
    gen = torch.Generator().manual_seed(5)
    queries = torch.rand(40, 4, generator=gen) + 0.1
    items = torch.linspace(0.1, 1, 300).unsqueeze(1) * torch.ones(1, 4)
    items = items[{"ascending": torch.arange(300), "descending": torch.arange(299, -1, -1),
                   "random": torch.randperm(300, generator=gen)}[order]]
    rows = merged_rows(monkeypatch)
    got = infer.topk_exact(build_similarity(4, False, ["dot"]), queries, items, k=5,
                           batch_size=16, chunk=30)
    assert torch.equal(got, (queries @ items.T).topk(5, dim=1).indices)
    chunks_after_first = 3 * 9  # 3 user batches, 10 chunks each
    if order == "ascending":
        assert rows == [16, 16, 16, 16, 16, 16, 16, 16, 16] * 2 + [8] * 9
    elif order == "descending":
        assert rows == []
    else:
        assert 0 < len(rows) < chunks_after_first


def test_pruned_merge_is_the_cpu_default_and_can_be_turned_off(monkeypatch):
    # (on CUDA the default is the plain merge: the pruned one decides on the host per chunk,
    # a device sync every chunk; not testable on this CPU-only suite)
    queries = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    items = torch.linspace(0.1, 1, 50).unsqueeze(1) * torch.ones(1, 4)
    items = items.flip(0)  # descending scores: no chunk after the first improves any row
    rows = merged_rows(monkeypatch)
    infer.topk_exact(build_similarity(4, False, ["dot"]), queries.abs(), items, k=3,
                     batch_size=6, chunk=10)
    assert rows == []  # CPU default: pruned
    infer.topk_exact(build_similarity(4, False, ["dot"]), queries.abs(), items, k=3,
                     batch_size=6, chunk=10, prune=False)
    assert rows == [6] * 4  # every chunk after the first merged into every row


def random_seen(num_users: int, num_candidates: int, most: int, gen) -> np.ndarray:
    """(M, 2) distinct (user, candidate) pairs ordered as seen_candidates gives them, up to
    `most` per user (some users none)."""
    pairs = {(u, int(c)) for u in range(num_users)
             for c in torch.randint(num_candidates, (int(torch.randint(most + 1, (1,),
                                                                        generator=gen)),),
                                    generator=gen)}
    return np.array(sorted(pairs), np.int64).reshape(-1, 2)


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("batch_size,chunk", [(1, 10), (7, 13), (16, 100), (64, 999)])
def test_seen_mask_inside_topk_equals_masked_full_topk_and_drop_seen(batch_size, chunk, prune):
    gen = torch.Generator().manual_seed(batch_size + chunk)
    queries, items = torch.randn(53, 8, generator=gen), torch.randn(400, 8, generator=gen)
    pairs = random_seen(53, 400, 60, gen)
    assert seen_filter.masking_fits(pairs, 53, 400, 10)
    got = infer.topk_exact(build_similarity(8, False, ["dot"]), queries, items, k=10,
                           batch_size=batch_size, chunk=chunk, prune=prune,
                           seen=seen_filter.SeenMask(pairs, 53))
    scores = queries @ items.T
    scores[pairs[:, 0], pairs[:, 1]] = float("-inf")
    assert torch.equal(got, scores.topk(10, dim=1).indices)
    # the same as the search for k + extra_k followed by drop_seen (the fallback path)
    wide = (queries @ items.T).topk(10 + seen_filter.extra_k(pairs, 53), dim=1).indices
    assert np.array_equal(got.numpy(), seen_filter.drop_seen(wide.numpy(), pairs, 400, 10))


def test_seen_mask_batch_gives_each_chunk_its_pairs():
    pairs = np.array([[0, 5], [0, 12], [2, 1], [2, 9], [3, 12], [5, 0]], np.int64)
    mask = seen_filter.SeenMask(pairs, 6)
    rows, cols, bounds = mask.batch(2, 5, np.array([0, 8, 16]))  # lines 2-4, chunks 0-7, 8-15
    assert rows.tolist() == [0, 0, 1] and cols.tolist() == [1, 9, 12]
    assert bounds.tolist() == [0, 1, 3]


def test_seen_plan_masks_only_when_every_user_keeps_k_unseen():
    pairs = np.array([[0, c] for c in range(15)] + [[1, 3]], np.int64)  # user 0: 15 of 20 seen
    exact = argparse.Namespace(ann="exact", topk=5)
    mask, k = infer.seen_plan(exact, pairs, 2, 20)
    assert isinstance(mask, seen_filter.SeenMask) and k == 5
    mask, k = infer.seen_plan(argparse.Namespace(ann="exact", topk=6), pairs, 2, 20)
    assert mask is None and k == 6 + 15  # user 0 keeps 5 < 6: drop_seen ranks seen ones last
    mask, k = infer.seen_plan(argparse.Namespace(ann="faiss", topk=5), pairs, 2, 20)
    assert mask is None and k == 5 + 15
    mask, k = infer.seen_plan(exact, np.zeros((0, 2), np.int64), 2, 20)
    assert mask is None and k == 5  # nothing seen: nothing to mask or drop


def test_chunk_smaller_than_k_still_returns_full_topk():
    gen = torch.Generator().manual_seed(1)
    queries, items = torch.randn(5, 4, generator=gen), torch.randn(30, 4, generator=gen)
    sim = Recording(build_similarity(4, False, ["dot"]))
    got = infer.topk_exact(sim, queries, items, k=10, batch_size=2, chunk=3)
    assert torch.equal(got, (queries @ items.T).topk(10, dim=1).indices)
    assert max(c for _, c in sim.shapes) == 10  # raised to k: a chunk must hold a full top-k


def test_chunk_flags_are_validated():
    args = infer.parse_args(["--eval_data_dir", "d", "--state_dict_path", "c", "--output", "o",
                             "--score_chunk", "4096", "--vector_chunk", "100"])
    assert (args.score_chunk, args.vector_chunk) == (4096, 100)
    assert infer.parse_args(["--eval_data_dir", "d", "--state_dict_path", "c",
                             "--output", "o"]).score_chunk is None
    for flag in ("--score_chunk", "--vector_chunk"):
        with pytest.raises(SystemExit) as e:
            infer.parse_args(["--eval_data_dir", "d", "--state_dict_path", "c", "--output", "o",
                              flag, "0"])
        assert e.value.code == 2


def test_bench_infer_reports_users_per_second_and_matches_plain_topk(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "benchmarks.inference", "--users", "300",
                    "--candidates", "2000", "--dim", "8", "--batch_size", "64",
                    "--score_chunk", "500", "--threads", "1", "--check", "--json", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    result = json.loads(out.read_text())
    assert result["users"] == 300 and result["candidates"] == 2000
    assert result["users_per_s"] > 0 and result["peak_rss_mb"] > 0
    assert result["checked_against_full_topk"] is True


def test_bench_infer_masks_seen_candidates_like_the_fallback(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "benchmarks.inference", "--users", "200",
                    "--candidates", "1500", "--dim", "8", "--batch_size", "64",
                    "--score_chunk", "300", "--threads", "1", "--seen_per_user", "40",
                    "--compare_seen", "--rounds", "1", "--check", "--json", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    result = json.loads(out.read_text())
    assert 7000 < result["seen_pairs"] <= 8000  # 40 draws per user, a few repeats dropped
    assert result["masked_equals_dropped"] is True and result["mask_speedup"] > 0
    assert result["checked_against_full_topk"] is True


def test_default_score_chunk_is_cache_sized_on_cpu_and_large_on_cuda():
    assert infer.default_score_chunk("cpu", 512) * 512 == infer.CPU_SCORE_BUDGET
    assert infer.default_score_chunk("cuda", 512) * 512 == infer.SCORE_BUDGET
    assert infer.default_score_chunk(torch.device("cpu"), 10 ** 9) == 1  # never zero
