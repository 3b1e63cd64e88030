"""The training objective from flags to a loss value: flags and their checks, the negatives
wrapper handed to batch assembly, and the step's loss (`objective_loss`), which calls the model
once and the loss through LossInputs, without branching on which loss it holds.

The loss classes live in objectives/losses.py, the host-side shared negatives in objectives/negatives.py;
docs/objectives.md says which loss to pick.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from training.cli_types import positive_float, positive_int, unit_interval
from dataset import TOKEN_ITEM
from objectives.losses import DEFAULT_NEGATIVES, LOSSES, SOFTMAX_LOSSES, Candidates, Loss, LossInputs
from objectives.negatives import GLOBAL_SOURCES, NEGATIVE_SOURCES, BatchNegatives


def add_flags(g) -> None:
    """The objective's flags (main.py's "objective" group)."""
    g.add_argument("--loss", choices=list(LOSSES), default="bce",
                   help="bce: the baseline (one negative per position, or K per sequence); "
                        "sampled_softmax: softmax over the positive and shared negatives with "
                        "logQ; full_softmax: cross-entropy over every item (chunked); gbce: "
                        "gSASRec's calibrated BCE with K uniform negatives per sequence")
    g.add_argument("--num_negatives", type=positive_int, default=None,
                   help="negatives K: per position for bce with K=1 (the baseline); K per "
                        "sequence, shared by its positions, for bce with K>1 and gbce; K global "
                        "negatives shared by the whole batch for sampled_softmax (default: bce 1, "
                        "gbce 256, sampled_softmax 1024; full_softmax uses every item)")
    g.add_argument("--negatives", nargs="+", choices=NEGATIVE_SOURCES, default=["uniform"],
                   help="sources of negatives: uniform, popularity (the smart sampler's mix: "
                        "--popular_ratio of the draws by popularity, with its curriculum) and, "
                        "for sampled_softmax, in_batch (the batch's other positives)")
    g.add_argument("--logq_correction", action=argparse.BooleanOptionalAction, default=None,
                   help="subtract each candidate's log expected count, per source (and the "
                        "positive's for in_batch); default: on for softmax losses whenever the "
                        "proposal is not uniform (popularity or in_batch)")
    g.add_argument("--tau", type=positive_float, default=1.0,
                   help="loss temperature: every logit is divided by it (0.02-0.1 with "
                        "--similarity cosine); rankings do not depend on it")
    g.add_argument("--gbce_t", type=unit_interval, default=0.75,
                   help="gbce calibration t in [0, 1]: 0 is BCE with K negatives")
    g.add_argument("--mask_history", action="store_true",
                   help="softmax/shared-negative losses: also mask candidates that are items of "
                        "the row's own sequence (as accidental hits), not only the positive")


def resolve_defaults(args) -> None:
    """Fill num_negatives and logq_correction left at None (their per-loss defaults), in place;
    idempotent, so every consumer of the flags may call it."""
    if args.num_negatives is None:
        args.num_negatives = DEFAULT_NEGATIVES[args.loss]
    if args.logq_correction is None:
        args.logq_correction = args.loss in SOFTMAX_LOSSES and (
            "in_batch" in args.negatives
            or (popularity_negatives(args) and args.popular_ratio > 0))


def check_args(args) -> str | None:
    """Resolve the objective's defaults in place (resolve_defaults); -> a one-line error for the
    parser, or None."""
    explicit_logq = args.logq_correction
    resolve_defaults(args)
    sources = list(args.negatives)
    if len(set(sources)) != len(sources):
        return f"--negatives has a duplicate: {sources}"
    if set(GLOBAL_SOURCES) <= set(sources):
        return ("--negatives: uniform and popularity are one global draw; pass popularity "
                "and set its share with --popular_ratio")
    if "in_batch" in sources and args.loss != "sampled_softmax":
        return f"--negatives in_batch needs --loss sampled_softmax (got --loss {args.loss})"
    if args.loss == "gbce" and popularity_negatives(args):
        return ("--loss gbce draws uniform negatives (its beta assumes them): drop popularity "
                "and --use_smart_sampling")
    if explicit_logq and args.loss not in SOFTMAX_LOSSES:
        return f"--logq_correction applies to softmax losses, not --loss {args.loss}"
    return None


def popularity_negatives(args) -> bool:
    """Whether the sampler draws a popular share (--use_smart_sampling or --negatives popularity)."""
    return bool(args.use_smart_sampling or "popularity" in args.negatives)


def wrap_sampler(args, sampler, target_counts: np.ndarray):
    """The sampler batch assembly calls: the per-position one itself for the baseline's BCE-1,
    else BatchNegatives over it (global draws of K, per batch or per row; in-batch Q from
    target_counts)."""
    loss = build_loss(args)
    if loss.per_position:
        return sampler
    sources = args.negatives
    k = 0 if loss.all_items or not set(sources) & set(GLOBAL_SOURCES) else args.num_negatives
    return BatchNegatives(sampler, k, "in_batch" in sources, target_counts,
                          bool(args.logq_correction), per_row=loss.per_row)


@dataclass
class Objective:
    """The loss and the settings the step needs around it (not the loss's own business)."""
    loss: Loss
    tau: float
    in_batch: bool
    mask_history: bool


def build_loss(args) -> Loss:
    resolve_defaults(args)
    return LOSSES[args.loss](args.num_negatives, args.gbce_t)


def build_objective(args) -> Objective:
    return Objective(build_loss(args), float(args.tau), "in_batch" in args.negatives,
                     bool(args.mask_history))


def objective_loss(model, raw, batch: dict[str, Tensor], obj: Objective) -> Tensor:
    """model: the (possibly DDP-wrapped) model to call; raw: the model itself (similarity,
    catalogue size); batch: TrainBatches arrays on the device -> the scalar loss. The loss says
    which negatives it takes (per position, per row or shared); one function builds each."""
    if obj.loss.per_position:
        return _per_position_loss(model, raw, batch, obj)
    if obj.loss.per_row:
        return _per_row_loss(model, raw, batch, obj)
    return _shared_loss(model, raw, batch, obj)


def _target_weight(batch: dict[str, Tensor]) -> Tensor:
    """(B, L) float: 1 where the position's next token is an item."""
    return ((batch["next_token_type"] == TOKEN_ITEM) & (batch["pos"] != 0)).float()


def _per_position_loss(model, raw, batch, obj: Objective) -> Tensor:
    seq, token_type, pos = batch["seq"], batch["token_type"], batch["pos"]
    feats, pos_v, neg_v, _ = model(seq, token_type, pos, batch["neg"], vectors=True,
                                   item_mm=batch.get("item_mm"))
    weight = _target_weight(batch)
    return obj.loss(LossInputs(raw.similarity, feats, pos_v, weight, obj.tau, neg=neg_v,
                               neg_weight=weight * (batch["neg"] != 0)))


def _per_row_loss(model, raw, batch, obj: Objective) -> Tensor:
    seq, token_type, pos = batch["seq"], batch["token_type"], batch["pos"]
    num_items = raw.item_emb.num_embeddings - 1
    feats, pos_v, _, cand_v = model(seq, token_type, pos, None, batch["cand"], vectors=True,
                                    item_mm=batch.get("item_mm"))
    ids = batch["cand"].view(seq.shape[0], -1)  # (B, K): row b's negatives
    cand = Candidates(ids, cand_v.view(*ids.shape, -1), batch["cand_logq"])
    seen = history_bitmap(seq, token_type, pos, num_items) if obj.mask_history else None
    return obj.loss(LossInputs(raw.similarity, feats, pos_v, _target_weight(batch), obj.tau,
                               pos_ids=pos, cand=cand, seen=seen, num_items=num_items))


def _shared_loss(model, raw, batch, obj: Objective) -> Tensor:
    seq, token_type, pos = batch["seq"], batch["token_type"], batch["pos"]
    num_items = raw.item_emb.num_embeddings - 1
    cand_ids = (torch.arange(1, num_items + 1, device=seq.device) if obj.loss.all_items
                else batch["cand"])
    feats, pos_v, _, cand_v = model(seq, token_type, pos, None, cand_ids, vectors=True,
                                    item_mm=batch.get("item_mm"))
    idx = batch["target_index"]  # (n,) the positions that count: no padding in the scores
    query = feats.reshape(-1, feats.shape[-1]).index_select(0, idx)
    pos_v = pos_v.reshape(-1, pos_v.shape[-1]).index_select(0, idx)
    pos_ids = pos.reshape(-1).index_select(0, idx)
    logq = torch.zeros_like(cand_ids, dtype=torch.float32) if obj.loss.all_items \
        else batch["cand_logq"]
    # in-batch negatives (the batch's distinct targets) come with the global ones in "cand"
    cand = Candidates(cand_ids, cand_v, logq, 1 if obj.loss.all_items else None)
    seen = history_bitmap(seq, token_type, pos, num_items) if obj.mask_history else None
    return obj.loss(LossInputs(
        raw.similarity, query, pos_v, torch.ones_like(pos_ids, dtype=torch.float32), obj.tau,
        pos_ids=pos_ids, pos_logq=batch["pos_logq"] if obj.in_batch else None, cand=cand,
        seen=seen, row=idx // seq.shape[1], num_items=num_items))


def history_bitmap(seq: Tensor, token_type: Tensor, pos: Tensor, num_items: int) -> Tensor:
    """seq, token_type, pos (B, L) -> (B, N+1) bool: the items of each row's window (inputs
    and targets). Built on the device by scatter: no sync, B x (N+1) bytes."""
    seen = torch.zeros(seq.shape[0], num_items + 1, dtype=torch.bool, device=seq.device)
    seen.scatter_(1, seq * (token_type == TOKEN_ITEM), True)
    return seen.scatter_(1, pos, True)
