"""Validation during training (loss every epoch, rankings every --eval_every), the choice of the
best checkpoint, and the final test of it."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from dataset import DataError
from evaluation.evaluate import evaluate
from inputs.batching import Queries, TrainBatches
from run_files import checkpoint as ckpt
from training import distributed as dist
from training import step
from training.setup import make_sampler

log = logging.getLogger("main")

def log_start(model, data, split, args, device, amp_dtype, writer) -> None:
    """The untrained model's validation loss and similarity scalars at step 0, so every curve
    starts where training starts."""
    step.log_similarity(writer, model, 0)
    fixed = make_sampler(args, data, split, seed=10_000 + args.seed)
    loss = validation_loss(dist.unwrap(model), data.seqs, validation_ranges(split), args, device,
                           amp_dtype, fixed)
    writer.add_scalar("Loss/valid", loss, 0)
    log.info("before training: valid loss %.4f", loss)


@torch.no_grad()
def validation_loss(model, seqs, ranges, args, device, amp_dtype, sampler) -> float:
    """Mean --loss over held-out users (fixed-seed negatives, so epochs compare)."""
    model.eval()
    total, n = torch.zeros((), device=device), 0
    batches = TrainBatches(seqs, ranges, args.maxlen, args.batch_size, sampler, seed=0,
                           shuffle=False)
    for batch in batches.epoch(0):
        total += step.compute_loss(model, step.model_inputs(model, batch, device), args, amp_dtype)
        n += 1
    model.train()
    return float(total) / max(n, 1)


def validation_ranges(split):
    """Held-out users' sequences (random_user), or each user's input up to and including the
    validation target (leave_one_out)."""
    if not isinstance(split.valid, Queries):
        return split.valid
    r = split.valid.inputs
    return type(r)(r.lines, r.start, r.end + 1)


def validate(model, data, split, args, device, amp_dtype, state, writer) -> dict | None:
    """Loss/valid every epoch; ranking metrics (leave_one_out) every --eval_every epochs."""
    fixed = make_sampler(args, data, split, seed=10_000 + args.seed)
    state.valid_loss = validation_loss(model, data.seqs, validation_ranges(split), args, device,
                                       amp_dtype, fixed)
    writer.add_scalar("Loss/valid", state.valid_loss, state.global_step)
    if not isinstance(split.valid, Queries) or state.epoch % args.eval_every:
        log.info("epoch %d: valid loss %.4f", state.epoch, state.valid_loss)
        return None
    metrics = run_evaluation(model, data, split.valid, args, device, amp_dtype)
    for key in ("HR@10", "NDCG@10", "AUC", "MRR", "score"):
        writer.add_scalar(f"Metrics/valid_{key}", metrics[key], state.global_step)
    log.info("epoch %d: valid loss %.4f, HR@10 %.4f, NDCG@10 %.4f", state.epoch,
             state.valid_loss, metrics["HR@10"], metrics["NDCG@10"])
    return metrics


def run_evaluation(model, data, queries, args, device, amp_dtype) -> dict:
    competition = args.eval_protocol == "competition"
    return evaluate(dist.unwrap(model), data.seqs, queries, data.itemnum, args.maxlen, device,
                    batch_size=args.eval_batch_size, filter_seen=args.eval_filter_seen,
                    sampled=args.eval_sampled, seed=args.seed, amp_dtype=amp_dtype,
                    protocol="competition" if competition else None,
                    candidates=candidate_pool(data) if competition else None)


def candidate_pool(data) -> np.ndarray | None:
    """The candidate pool the data brings (`candidate_items`: item ids, e.g. the seen items of
    a V2 candidate/ folder), else None: rank against all items."""
    pool = getattr(data, "candidate_items", None)
    if pool is None:
        return None
    ids = np.asarray(pool, np.int64)
    if len(ids) and (ids.min() < 1 or ids.max() > data.itemnum):
        raise DataError(f"candidate pool: item ids must be in 1..{data.itemnum}, got "
                        f"{ids.min()}..{ids.max()}")
    return ids


def track_best(state, metrics, path, patience: int) -> bool:
    """Update best-by-valid-NDCG@10; True when --patience says stop."""
    if metrics is None:
        return False
    if metrics["NDCG@10"] > state.best_ndcg:
        # by folder name: a run folder that moved before a resume still finds its best
        state.best_ndcg, state.best_epoch, state.best_path, state.stale = \
            metrics["NDCG@10"], state.epoch, path.name, 0
        state.best_by, state.best_value = "valid NDCG@10", metrics["NDCG@10"]
    else:
        state.stale += 1
    return 0 < patience <= state.stale


def track_best_loss(state, path) -> None:
    """Without rankings (random_user): the best checkpoint is the one of the lowest valid loss."""
    if state.best_value is None or state.valid_loss < state.best_value:
        state.best_epoch, state.best_path = state.epoch, path.name
        state.best_by, state.best_value = "valid loss", state.valid_loss


def final_test(model, data, split, args, device, amp_dtype, state, train: bool) -> dict:
    """{"valid": metrics, "test": metrics} of the best checkpoint (of the loaded one when not
    training)."""
    if train and state.best_path:
        best = best_checkpoint(Path(args.ckpt_dir), state)
        if best is not None:
            dist.unwrap(model).load_state_dict(ckpt.load_checkpoint(best, mmap=True)["model"])
    return {"valid": run_evaluation(model, data, split.valid, args, device, amp_dtype),
            "test": run_evaluation(model, data, split.test, args, device, amp_dtype)}


def best_checkpoint(ckpt_dir: Path, state) -> Path | None:
    """The best checkpoint of the run; when it was deleted (users prune), the best one that
    still exists, else None (the final weights stand). Updates state.best_* to what is used."""
    best = ckpt_dir / Path(state.best_path).name
    if (best / ckpt.WEIGHTS).is_file():
        return best
    fallback = ckpt.best_existing(ckpt_dir)
    if fallback is None:
        log.warning("best checkpoint %s is gone and no other checkpoint records a valid NDCG@10: "
                    "testing the final model", best)
        state.best_path, state.best_epoch = None, state.epoch
        return None
    epoch, _, config = ckpt.recorded_checkpoints(ckpt_dir)[fallback]
    log.warning("best checkpoint %s is gone: testing the best that still exists, %s "
                "(valid NDCG@10 %.4f)", best, fallback.name, config["valid_metrics"]["NDCG@10"])
    state.best_path, state.best_epoch = fallback.name, epoch
    return fallback

