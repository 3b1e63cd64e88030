"""Time infer.py's exact top-k stage at the competition's scale, on random vectors.

    python -m benchmarks.inference --users 1000000 --candidates 660000 --dim 32 --threads 1

Scores --users random query vectors against --candidates random candidate vectors with
infer.topk_exact (the dot product, chunked over users by --batch_size and over candidates by
--score_chunk, with a running top-k merge) and prints users/s and the process's peak RSS. The
model's forward passes are not part of this (bench.py measures them). --compare_prune times the
pruned merge (infer's CPU default) and the plain one in turns on the same vectors, and checks
that they pick the same items. --seen_per_user S gives every user S random seen candidates,
masked inside the top-k as infer.py --exclude_seen does; --compare_seen also times the
fallback (search the top k + the most seen by one user, drop the seen ones after) in turns.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
import torch

import infer
from evaluation import seen as seen_filter
from inputs.unique import sorted_unique
from training.cli_types import device_name, positive_int
from training.setup import resolve_device
from similarity import DotSimilarity

CHECK_LIMIT = 10 ** 8  # --check builds the full (U, N) score matrix: small runs only


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--users", type=positive_int, default=1_000_000, help="query vectors")
    p.add_argument("--candidates", type=positive_int, default=660_000, help="candidate vectors")
    p.add_argument("--dim", type=positive_int, default=32, help="vector width")
    p.add_argument("--topk", type=positive_int, default=10, help="items kept per user")
    p.add_argument("--batch_size", type=positive_int, default=512, help="users per scoring step")
    p.add_argument("--score_chunk", type=positive_int, default=None,
                   help="candidates per scoring step (default as infer.py's: "
                        f"{infer.CPU_SCORE_BUDGET} // --batch_size on CPU, "
                        f"{infer.SCORE_BUDGET} // --batch_size on CUDA)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the random vectors")
    p.add_argument("--check", action="store_true",
                   help=f"also compare with one full-matrix topk (users x candidates <= "
                        f"{CHECK_LIMIT:,})")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=None,
                   help="merge a candidate chunk only into the users it can improve (default "
                        "as infer.py's: on CPU, off on CUDA)")
    p.add_argument("--compare_prune", action="store_true",
                   help="time the pruned and the plain merge in turns (--rounds each) and "
                        "report both, their ratio and whether their top-k are equal")
    p.add_argument("--seen_per_user", type=int, default=0,
                   help="random seen candidates per user (duplicates dropped), excluded from "
                        "the top-k by masking inside it, as infer.py --exclude_seen does")
    p.add_argument("--compare_seen", action="store_true",
                   help="with --seen_per_user: also time the fallback (the top k + the most "
                        "seen by one user, seen ones dropped after) in turns; report both, "
                        "their ratio and whether their top-k are equal")
    p.add_argument("--rounds", type=positive_int, default=2,
                   help="timed runs of each variant with --compare_prune or --compare_seen "
                        "(medians reported)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    return p


def random_vectors(n: int, dim: int, gen: torch.Generator, device) -> torch.Tensor:
    """(n, dim) float32 standard normal rows, made on the host in 65,536-row pieces."""
    out = torch.empty(n, dim)
    for b in range(0, n, 65536):
        out[b:b + 65536] = torch.randn(min(65536, n - b), dim, generator=gen)
    return out.to(device)


def random_seen(users: int, candidates: int, per_user: int, seed: int) -> np.ndarray:
    """(M, 2) int64 distinct (user, candidate) pairs, ordered as seen_filter.seen_candidates
    gives them: per_user random draws each (the few repeats dropped)."""
    rng = np.random.default_rng(seed)
    keys = (np.repeat(np.arange(users, dtype=np.int64), per_user) * candidates
            + rng.integers(0, candidates, users * per_user))
    keys = sorted_unique(keys)
    return np.stack([keys // candidates, keys % candidates], 1)


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, 0)
    gen = torch.Generator().manual_seed(args.seed)
    queries = random_vectors(args.users, args.dim, gen, device)
    items = random_vectors(args.candidates, args.dim, gen, device)
    sim = DotSimilarity()
    chunk = args.score_chunk or infer.default_score_chunk(device, args.batch_size)
    seen = (random_seen(args.users, args.candidates, args.seen_per_user, args.seed)
            if args.seen_per_user else None)

    def timed(prune, masked=True):
        start = time.perf_counter()
        if seen is None or masked:
            mask = None if seen is None else seen_filter.SeenMask(seen, args.users)
            top = infer.topk_exact(sim, queries, items, args.topk, args.batch_size, chunk,
                                   prune, seen=mask)
        else:
            k = args.topk + seen_filter.extra_k(seen, args.users)
            top = infer.topk_exact(sim, queries, items, k, args.batch_size, chunk, prune)
            top = torch.from_numpy(seen_filter.drop_seen(top.numpy(), seen, args.candidates,
                                                         args.topk))
        return top, time.perf_counter() - start  # top is on the host: the device work is done

    result = {"users": args.users, "candidates": args.candidates, "dim": args.dim,
              "topk": args.topk, "batch_size": args.batch_size, "score_chunk": chunk,
              "threads": torch.get_num_threads(), "device": str(device),
              "score_block_mb": min(args.batch_size, args.users) * chunk * 4 / 2 ** 20,
              "seen_pairs": 0 if seen is None else len(seen)}
    if args.compare_prune:
        top, seconds = compare_prune(timed, args.rounds, args.users, result)
    elif args.compare_seen:
        top, seconds = compare_seen(lambda masked: timed(args.prune, masked), args.rounds,
                                    args.users, result)
    else:
        top, seconds = timed(args.prune)
    result.update(seconds=seconds, users_per_s=args.users / seconds,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.check:
        result["checked_against_full_topk"] = check(queries, items, top, args.topk, seen)
    return result


def in_turns(timed, variants: tuple, rounds: int) -> tuple[dict, dict]:
    """Run timed(variant) for each variant in turns (a load change hits all), rounds times ->
    ({variant: its last top-k}, {variant: median seconds})."""
    tops, times = {}, {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            tops[v], seconds = timed(v)
            times[v].append(seconds)
    return tops, {v: statistics.median(t) for v, t in times.items()}


def compare_prune(timed, rounds: int, users: int, result: dict):
    """Time the pruned and the plain merge in turns; adds the plain merge's numbers, the ratio
    and the equality of the two top-k to result -> the pruned (top, median seconds)."""
    tops, seconds = in_turns(timed, (True, False), rounds)
    result.update(seconds_unpruned=seconds[False], users_per_s_unpruned=users / seconds[False],
                  prune_speedup=seconds[False] / seconds[True],
                  pruned_equals_unpruned=bool(torch.equal(tops[True], tops[False])))
    return tops[True], seconds[True]


def compare_seen(timed, rounds: int, users: int, result: dict):
    """Time the seen mask inside the top-k and the fallback (top k + extra, drop_seen) in
    turns; adds the fallback's numbers, the ratio and the equality of the two top-k to result
    -> the masked (top, median seconds)."""
    tops, seconds = in_turns(timed, (True, False), rounds)
    result.update(seconds_drop_seen=seconds[False], users_per_s_drop_seen=users / seconds[False],
                  mask_speedup=seconds[False] / seconds[True],
                  masked_equals_dropped=bool(torch.equal(tops[True], tops[False])))
    return tops[True], seconds[True]


def check(queries: torch.Tensor, items: torch.Tensor, top: torch.Tensor, k: int,
          seen: np.ndarray | None) -> bool:
    """True when the chunked result equals one topk over the full (U, N) score matrix (the
    seen pairs at -inf)."""
    with torch.no_grad():
        scores = queries @ items.T
        if seen is not None:
            scores[torch.from_numpy(seen[:, 0]), torch.from_numpy(seen[:, 1])] = float("-inf")
        want = scores.topk(min(k, len(items)), dim=1).indices.cpu()
    return bool(torch.equal(top, want))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare_seen and not args.seen_per_user:
        parser.error("--compare_seen needs --seen_per_user S > 0")
    if args.compare_seen and args.compare_prune:
        parser.error("--compare_seen and --compare_prune: pick one comparison per run")
    if args.seen_per_user < 0 or args.topk > args.candidates - args.seen_per_user:
        parser.error("--seen_per_user must be >= 0 and leave every user --topk unseen "
                     "candidates")
    if args.check and args.users * args.candidates > CHECK_LIMIT:
        parser.error(f"--check builds the full score matrix: --users x --candidates must be "
                     f"<= {CHECK_LIMIT:,}, got {args.users * args.candidates:,}")
    result = run(args)
    print(json.dumps(result, indent=1))
    print(f"{result['users_per_s']:,.0f} users/s ({args.users:,} users x {args.candidates:,} "
          f"candidates x {args.dim} in {result['seconds']:.1f} s, {result['threads']} thread(s)); "
          f"peak RSS {result['peak_rss_mb']:,.0f} MB; 1,000,000 users would take "
          f"{1e6 / result['users_per_s']:,.0f} s at this rate", file=sys.stderr)
    if args.compare_prune:
        print(f"plain merge: {result['users_per_s_unpruned']:,.0f} users/s; pruned "
              f"{result['prune_speedup']:.2f}x faster, same top-k: "
              f"{result['pruned_equals_unpruned']}", file=sys.stderr)
    if args.compare_seen:
        print(f"top {args.topk} + extra, seen dropped after: "
              f"{result['users_per_s_drop_seen']:,.0f} users/s; masked inside the top-k "
              f"{result['mask_speedup']:.2f}x faster, same top-k: "
              f"{result['masked_equals_dropped']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
