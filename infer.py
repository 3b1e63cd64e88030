"""Recommend the top-k candidates for every user of a competition inference directory.

    python infer.py --eval_data_dir DIR --state_dict_path CKPT --output FILE.json

Reads top to bottom: flags -> checkpoint -> inference data (layouts/inference_v1.py) -> model ->
candidate vectors -> query vectors -> top-k (exact or faiss) -> outputs.

Outputs:
- FILE.json: {"users": [raw user ids, one per predict_seq line], "top10s": [[creative ids]]};
- in the same folder, the baseline's binary files for the platform's inner-product ANN tool:
  `embedding.fbin` (candidate vectors), `id.u64bin` (their retrieval ids), `query.fbin` (query
  vectors), each a header of uint32 N, uint32 D, then N rows (float32; uint64 with D = 1), plus
  `retrieve_id2creative_id.json` to map the tool's retrieval ids back to creative ids.
  The vectors written are the similarity's exact inner-product reduction
  (`similarity.item_vectors`, `similarity.query_vectors`): the raw model vectors for the dot
  product, and for the adaptive similarity the vectors whose inner product IS the model's score,
  so an inner-product ANN over these files ranks as the model does.
Every output is written to a temporary sibling and renamed, never half-written.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from run_files import checkpoint as ckpt
from training.cli_types import device_name, positive_int
from inputs.batching import Ranges, query_arrays
from inputs.heap import trim_heap
from dataset import BAD_RECORD_POLICIES, DataError, FeatureSchema
from evaluation import seen as seen_filter
from layouts.inference_v1 import InferenceData
from layouts.inference_v2 import load_inference
from training.flags import AMP_DTYPES
from training.flags import build_parser as training_parser
from training.setup import build_model, feature_tensors, resolve_device
from training.step import autocast, to_device
from model import BaseModel

log = logging.getLogger("infer")

# The platform's environment variables, mapped to flag defaults here and nowhere else.
ENV_DEFAULTS = {"eval_data_dir": "EVAL_DATA_PATH", "result_dir": "EVAL_RESULT_PATH"}
ANN_METHODS = ("exact", "faiss")
RESULT_NAME = "top10.json"
SCORE_BUDGET = 2 ** 24  # scores held at once per exact top-k step (64 MB in fp32)
# On CPU a 4 MB score block stays in cache: 1.4-1.8x the users/s of 64 MB blocks at 660k x 32
# (benchmarks/inference.py, docs/speed.md); a GPU wants the large blocks.
CPU_SCORE_BUDGET = 2 ** 20
TRIM_EVERY = 64  # query batches between heap trims: 0.15% of the stage at 1M users (docs/speed.md)


class InferenceError(Exception):
    """A setup problem the user must fix (e.g. --ann faiss without faiss installed)."""


# --------------------------------------------------------------------------- flags

def build_parser() -> argparse.ArgumentParser:
    result_dir = os.environ.get(ENV_DEFAULTS["result_dir"])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--eval_data_dir", default=os.environ.get(ENV_DEFAULTS["eval_data_dir"]),
                   help="inference directory, V1 (indexer.pkl, item_feat_dict.json, "
                        "creative_emb/, predict_seq.jsonl, predict_seq_offsets.pkl, "
                        "predict_set.jsonl) or V2 (seq/, item_feat/, user_feat/, candidate/, "
                        "indexer.pkl: the users of seq/ ranked over candidate/) "
                        "(env EVAL_DATA_PATH)")
    p.add_argument("--state_dict_path", required=True,
                   help="checkpoint folder (epochNNN_stepNNNNNNNNN/) or its model.pt")
    p.add_argument("--output", default=str(Path(result_dir) / RESULT_NAME) if result_dir else None,
                   help="result JSON; the .fbin/.u64bin files go to the same folder "
                        f"(env EVAL_RESULT_PATH: <EVAL_RESULT_PATH>/{RESULT_NAME})")
    p.add_argument("--device", type=device_name, default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--batch_size", type=positive_int, default=512,
                   help="users per forward pass and per scoring step")
    p.add_argument("--topk", type=positive_int, default=10, help="items recommended per user")
    p.add_argument("--score_chunk", type=positive_int, default=None,
                   help="candidates scored per step of the exact top-k (a running top-k merges "
                        "the steps): at most --batch_size x this many scores exist at once; "
                        f"default {SCORE_BUDGET} // --batch_size on CUDA (64 MB of fp32 scores), "
                        f"{CPU_SCORE_BUDGET} // --batch_size on CPU (4 MB, cache-sized)")
    p.add_argument("--vector_chunk", type=positive_int, default=65536,
                   help="candidates per forward pass when computing the candidate vectors")
    p.add_argument("--ann", choices=ANN_METHODS, default="exact",
                   help="exact: score every candidate with the model's similarity; faiss: an "
                        "exact inner-product faiss index over the reduced vectors (same ranking; "
                        "needs faiss)")
    p.add_argument("--amp", choices=list(AMP_DTYPES), default="none",
                   help="bf16 autocast for the model's forward passes; scoring stays fp32")
    p.add_argument("--exclude_seen", action=argparse.BooleanOptionalAction, default=True,
                   help="drop candidates the user already interacted with (the competition's "
                        "targets are items new to the user); seen ones fill in only when fewer "
                        "than --topk unseen candidates remain")
    p.add_argument("--official_result", default=None,
                   help="also write the official eval.py's result.json ({time, top10s, user}) "
                        "into this folder")
    p.add_argument("--on_bad_record", choices=BAD_RECORD_POLICIES, default="error",
                   help="a malformed record stops the run (error) or is skipped and counted "
                        "(skip); cold ids and unseen feature values are never errors")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.eval_data_dir:
        parser.error("--eval_data_dir is required (or set EVAL_DATA_PATH)")
    if not args.output:
        parser.error("--output is required (or set EVAL_RESULT_PATH)")
    if args.topk < 1 or args.batch_size < 1:
        parser.error("--topk and --batch_size must be positive")
    return args


# --------------------------------------------------------------------------- model

def training_args(config: dict) -> argparse.Namespace:
    """The checkpoint's training flags over main.py's defaults (flags added since still parse)."""
    args = training_parser().parse_args([])
    vars(args).update(config.get("args", {}))
    return args


def load_trained(path: str) -> tuple[argparse.Namespace, dict, dict]:
    """-> (training args, stored data description {schema, itemnum, usernum} or {}, weights)."""
    saved = ckpt.load_training_checkpoint(path, mmap=True)  # the optimizer state stays on disk
    config = saved["config"]
    return training_args(config), config.get("data") or {}, saved["model"]


def load_model(train_args, data: InferenceData, weights: dict, device) -> BaseModel:
    """The trained model over the inference tables; strict load (the tables are non-persistent
    buffers, so they are not part of the weights)."""
    tables = {**feature_tensors(data),
              **{k: torch.from_numpy(v) for k, v in data.emb_id_tables().items()}}
    model = build_model(train_args, data.schema.to_dict(), tables, data.itemnum, data.usernum)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"weights do not fit the model rebuilt from the checkpoint's "
                                   f"flags and schema: {_first_line(e)}") from None
    return model.to(device).eval()


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:2])[:300]


# --------------------------------------------------------------------------- vectors

@torch.no_grad()
def candidate_vectors(model: BaseModel, rows: np.ndarray, device, amp_dtype,
                      chunk: int = 65536) -> Tensor:
    """Item rows (N,) -> (N, D) float32 item vectors (model.embed_items)."""
    ids = torch.from_numpy(np.asarray(rows, np.int64))
    out = []
    for b in tqdm(range(0, len(ids), chunk), desc="candidate vectors", disable=None, leave=False):
        with autocast(device, amp_dtype):
            out.append(model.embed_items(ids[b:b + chunk].to(device)).float())
    return torch.cat(out)


@torch.no_grad()
def user_queries(model: BaseModel, data: InferenceData, maxlen: int, device, amp_dtype,
                 batch_size: int) -> Tensor:
    """(U, D) float32 query of every line: model.predict on its newest maxlen + 1 tokens
    (profile pinned first when longer, newest item in the last slot; nothing dropped)."""
    off = np.asarray(data.seqs.line_offsets, np.int64)
    n = data.seqs.num_lines
    out = []
    for i, b in enumerate(tqdm(range(0, n, batch_size), desc="queries", disable=None,
                               leave=False)):
        lines = np.arange(b, min(b + batch_size, n))
        arrays = query_arrays(data.seqs, Ranges(lines, off[lines], off[lines + 1]), maxlen)
        batch = to_device(arrays, device)
        with autocast(device, amp_dtype):
            out.append(model.predict(batch["seq"], batch["token_type"]).float())
        if i % TRIM_EVERY == TRIM_EVERY - 1:
            trim_heap()  # else the heap keeps the batches' freed pages (inputs/heap.py)
    return torch.cat(out) if out else torch.zeros(0, model.hidden, device=device)


# --------------------------------------------------------------------------- top-k

@torch.no_grad()
def topk_exact(similarity, queries: Tensor, items: Tensor, k: int, batch_size: int,
               chunk: int | None = None, prune: bool | None = None,
               seen: seen_filter.SeenMask | None = None) -> Tensor:
    """queries (U, D), items (N, D) -> (U, min(k, N)) int64 item indices, best first.

    Users go batch_size at a time and candidates chunk at a time (default SCORE_BUDGET //
    batch_size), with a running top-k merge over the candidate chunks: the scores held at once
    are at most (batch_size, chunk) plus the (batch_size, 2k) merge, whatever U and N.

    prune (default: on CPU) merges a chunk only into the rows whose best score in it beats
    their current k-th best. After the first chunks few rows qualify, so most chunks cost a
    matrix product and a row max instead of a top-k (a top-k of a 512 x 2,048 block costs
    ~8x its product on CPU; 2.4x the users/s at 660k x 32, docs/speed.md). It needs a host
    decision per chunk, a device sync on CUDA, so it is off there.

    seen: each user's seen candidates score -inf (the caller checks that every user keeps k
    unseen ones: seen_filter.masking_fits)."""
    k = min(k, len(items))
    if chunk is None:
        chunk = SCORE_BUDGET // max(1, min(batch_size, len(queries)))
    chunk = max(k, chunk)  # each chunk must be able to hold a full top-k
    if prune is None:
        prune = queries.device.type == "cpu"
    merge = _merge_rows_that_improve if prune else _merge
    starts = np.append(np.arange(0, len(items), chunk), len(items))
    out = []
    for b in tqdm(range(0, len(queries), batch_size), desc="top-k", disable=None, leave=False):
        q = queries[b:b + batch_size]
        mask = None if seen is None else _batch_mask(seen, b, b + len(q), starts, q.device)

        def block(i: int) -> Tensor:
            scores = similarity.score_all(q, items[starts[i]:starts[i + 1]])
            if mask is not None:
                rows, cols, bounds = mask
                lo, hi = bounds[i], bounds[i + 1]
                # a value made on the device: new_tensor(-inf) would copy from the host
                minus_inf = torch.full((), float("-inf"), dtype=scores.dtype,
                                       device=scores.device)
                scores.index_put_((rows[lo:hi], cols[lo:hi] - starts[i]), minus_inf)
            return scores

        # the first chunk holds at least k candidates (chunk >= k, N >= k): a full top-k
        best_s, best_i = block(0).topk(k, dim=1)
        for i in range(1, len(starts) - 1):
            best_s, best_i = merge(best_s, best_i, block(i), int(starts[i]), k)
        out.append(best_i.cpu())
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def _batch_mask(seen: seen_filter.SeenMask, first: int, stop: int, starts: np.ndarray, device):
    """SeenMask.batch with rows and columns on the device (bounds stay host ints: slicing by
    them needs no sync)."""
    rows, cols, bounds = seen.batch(first, stop, starts)
    return (torch.from_numpy(rows).to(device, non_blocking=True),
            torch.from_numpy(cols).to(device, non_blocking=True), bounds.tolist())


def _merge(best_s: Tensor, best_i: Tensor, scores: Tensor, offset: int, k: int):
    """The running top-k (rows, k), best first, merged with a score block whose column j is
    candidate offset + j."""
    s, i = scores.topk(min(k, scores.shape[1]), dim=1)
    s, pick = torch.cat([best_s, s], 1).topk(k, dim=1)
    return s, torch.cat([best_i, i + offset], 1).gather(1, pick)


def _merge_rows_that_improve(best_s: Tensor, best_i: Tensor, scores: Tensor, offset: int,
                             k: int):
    """_merge, for only the rows whose block maximum beats their k-th best (a candidate that
    ties it is not taken: full-matrix topk's choice among equal scores is arbitrary too)."""
    rows = (scores.amax(1) > best_s[:, -1]).nonzero().squeeze(1)
    if len(rows):
        best_s[rows], best_i[rows] = _merge(best_s[rows], best_i[rows], scores[rows], offset, k)
    return best_s, best_i


def default_score_chunk(device, batch_size: int) -> int:
    """Candidates per exact top-k step when --score_chunk is not given: the device's score
    budget over the user batch."""
    budget = CPU_SCORE_BUDGET if torch.device(device).type == "cpu" else SCORE_BUDGET
    return max(1, budget // batch_size)


def check_finite_vectors(vectors: Tensor, what: str, names: list) -> None:
    """(N, D) vectors -> InferenceError naming the first row with a NaN or inf. The last
    defence: topk ranks NaN first, so one such candidate would top every user's list. One
    device sync, once per run."""
    bad = ~torch.isfinite(vectors).all(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise InferenceError(f"the vector of {what} {names[row]!r} (and {int(bad.sum()) - 1} "
                             f"more) is not finite: a NaN or inf in its input data or in the "
                             "checkpoint's weights")


def topk_faiss(q_reduced: Tensor, v_reduced: Tensor, k: int, batch_size: int) -> Tensor:
    """Exact inner-product search (faiss IndexFlatIP) over the reduced vectors -> (U, k)."""
    faiss = _import_faiss()
    k = min(k, len(v_reduced))
    index = faiss.IndexFlatIP(v_reduced.shape[1])
    index.add(np.ascontiguousarray(v_reduced.cpu().numpy(), np.float32))
    q = np.ascontiguousarray(q_reduced.cpu().numpy(), np.float32)
    step = max(batch_size, 4096)  # faiss batches well internally; the step is for the bar
    out = [index.search(q[b:b + step], k)[1]
           for b in tqdm(range(0, len(q), step), desc="faiss search", disable=None, leave=False)]
    return torch.from_numpy(np.concatenate(out) if out else np.zeros((0, k), np.int64))


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise InferenceError("--ann faiss needs the faiss package (pip install faiss-cpu, or "
                             "faiss-gpu); or use --ann exact, which ranks the same") from None
    return faiss


# --------------------------------------------------------------------------- outputs

def write_vectors(path: Path, rows: np.ndarray, dtype) -> None:
    """The baseline's .fbin/.u64bin: uint32 N, uint32 D, then N rows of D values."""
    rows = np.ascontiguousarray(rows, dtype=dtype)
    if rows.ndim == 1:
        rows = rows.reshape(-1, 1)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.asarray(rows.shape, dtype="<u4").tofile(f)
        rows.astype(rows.dtype.newbyteorder("<"), copy=False).tofile(f)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, default=_plain))
    os.replace(tmp, path)


def write_json_lists(path: Path, fields: list[tuple[str, object]], chunk: int = 65_536) -> None:
    """A JSON object of scalar and list fields, the lists (Python lists or numpy arrays, one
    element per user) written `chunk` elements at a time: the text of 10M users' top-10s never
    exists at once. The same text as json.dumps of the whole object."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write("{")
        for n, (key, value) in enumerate(fields):
            f.write(f"{', ' if n else ''}{json.dumps(key)}: ")
            if not isinstance(value, (list, np.ndarray)):
                f.write(json.dumps(value, default=_plain))
                continue
            f.write("[")
            for start in range(0, len(value), chunk):
                part = value[start:start + chunk]
                part = part.tolist() if isinstance(part, np.ndarray) else part
                f.write((", " if start else "") + json.dumps(part, default=_plain)[1:-1])
            f.write("]")
        f.write("}")
    os.replace(tmp, path)


def _plain(value):
    """numpy scalars (raw ids in a numpy-built indexer) -> Python scalars for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_outputs(output: Path, data: InferenceData, top: Tensor, q_reduced: Tensor,
                  v_reduced: Tensor) -> dict:
    """The vector files, the id map, and --output: {"users": [...], "top10s": [[...]]}.
    Returns {"users": list, "top10s": (users, k) int64 array of creative ids}."""
    output.parent.mkdir(parents=True, exist_ok=True)
    folder = output.parent
    write_vectors(folder / "embedding.fbin", v_reduced.cpu().numpy(), np.float32)
    write_vectors(folder / "id.u64bin", data.cand_retrieval_ids, np.uint64)
    write_vectors(folder / "query.fbin", q_reduced.cpu().numpy(), np.float32)
    write_json(folder / "retrieve_id2creative_id.json",
               {str(r): int(c) for r, c in zip(data.cand_retrieval_ids.tolist(),
                                               data.cand_creative_ids.tolist())})
    result = {"users": data.users, "top10s": data.cand_creative_ids[top.numpy()]}
    write_json_lists(output, list(result.items()))  # last: its presence means all is complete
    return result


def write_official_result(folder: Path, result: dict) -> None:
    """The official eval.py's result.json: {"time": unix seconds, "top10s", "user"}."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json_lists(folder / "result.json", [("time", int(time.time())),
                                              ("top10s", result["top10s"]),
                                              ("user", result["users"])])


# --------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    """Run inference; returns {"users": list, "top10s": (users, k) array}, as written to
    --output."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.ann == "faiss":
        _import_faiss()  # fail before the slow parts
    device = resolve_device(args.device, 0)
    amp_dtype = AMP_DTYPES[args.amp]
    train_args, stored, weights = load_trained(args.state_dict_path)
    schema = FeatureSchema.from_dict(stored["schema"]) if "schema" in stored else None
    data = load_inference(args.eval_data_dir, schema, stored.get("itemnum"),
                          stored.get("usernum"), train_args.mm_emb_id, args.on_bad_record)
    seen = (seen_filter.seen_candidates(data.seqs, data.item_emb_id, data.cand_rows)
            if args.exclude_seen else np.zeros((0, 2), np.int64))
    mask, k = seen_plan(args, seen, data.seqs.num_lines, len(data.cand_rows))
    model = load_model(train_args, data, weights, device)
    del weights  # the model holds its own copy
    start = time.perf_counter()
    items = candidate_vectors(model, data.cand_rows, device, amp_dtype, args.vector_chunk)
    log.info("candidate vectors: %d in %.1f s", len(items), seconds_since(start, device))
    queries = user_queries(model, data, train_args.maxlen, device, amp_dtype, args.batch_size)
    log.info("query vectors: %d users, %.1f s since the start", len(queries),
             seconds_since(start, device))
    with torch.no_grad():
        v_reduced = model.similarity.item_vectors(items).float()
        q_reduced = model.similarity.query_vectors(queries).float()
    check_finite_vectors(v_reduced, "candidate", data.cand_creative_ids.tolist())
    check_finite_vectors(q_reduced, "user", data.users)
    scoring = time.perf_counter()
    if args.ann == "faiss":
        top = topk_faiss(q_reduced, v_reduced, k, args.batch_size)
    else:
        top = topk_exact(model.similarity, queries, items, k, args.batch_size,
                         args.score_chunk or default_score_chunk(device, args.batch_size),
                         seen=mask)
    scored = time.perf_counter()  # topk_* return CPU tensors: the device work is done here
    if mask is None:
        top = torch.from_numpy(seen_filter.drop_seen(top.numpy(), seen, len(items), args.topk))
    result = write_outputs(Path(args.output), data, top, q_reduced, v_reduced)
    if args.official_result:
        write_official_result(Path(args.official_result), result)
    log.info("wrote top-%d of %d candidates for %d users to %s", top.shape[1], len(items),
             len(result["users"]), args.output)
    log_throughput(len(result["users"]), len(items), scored - scoring,
                   time.perf_counter() - start)
    return result


def seen_plan(args, seen: np.ndarray, num_lines: int, num_candidates: int):
    """-> (SeenMask or None, the k to search). The exact top-k masks the seen candidates itself
    when that gives drop_seen's result, so k stays --topk; else (faiss, or a user with fewer
    than k unseen candidates) search k + the most seen by one user and drop_seen afterwards."""
    if args.ann == "exact" and len(seen) and seen_filter.masking_fits(
            seen, num_lines, num_candidates, args.topk):
        log.info("seen candidates: %d (user, candidate) pairs, masked inside the top-k",
                 len(seen))
        return seen_filter.SeenMask(seen, num_lines), args.topk
    extra = seen_filter.extra_k(seen, num_lines)
    if extra:
        log.info("seen candidates: %d pairs; searching the top %d and dropping them after",
                 len(seen), args.topk + extra)
    return None, args.topk + extra


def seconds_since(start: float, device) -> float:
    """Wall time since start once the device's queued work is done (one sync per stage)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def log_throughput(users: int, candidates: int, score_s: float, total_s: float) -> None:
    """users/s of the top-k stage alone and of vectors + top-k + outputs (checkpoint and data
    loading excluded)."""
    log.info("top-k: %d users x %d candidates in %.1f s (%.0f users/s); vectors, top-k and "
             "outputs: %.1f s (%.0f users/s)", users, candidates, score_s,
             users / max(score_s, 1e-9), total_s, users / max(total_s, 1e-9))


def cli(argv=None) -> int:
    try:
        main(argv)
        return 0
    except (DataError, ckpt.CheckpointError, InferenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an output folder that cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
