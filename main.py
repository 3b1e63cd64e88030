"""Train the TAAC 2025 baseline model: `python main.py [--data_dir DIR] [flags]`.

Reads top to bottom (the flags themselves are in flags.py): flags -> run folders and logging -> seed and device -> data and split ->
sampler, model, optimizer -> resume -> loop (train, validate, checkpoint) -> final test.
`main(argv)` returns the final results so tests can call it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import checkpoint as ckpt
import distributed as dist
import objective
import run_folders
import run_summary
import tb_meta
from batching import Queries, TrainBatches, competition_split, item_counts, leave_one_out_split, \
    random_user_split
from dataset import DataError, load_dataset
from evaluate import evaluate
from flags import AMP_DTYPES, build_parser, parse_args
from host_tables import move_item_mm
from input_pipeline import assembly_threads, prefetch
from model import BaseModel, ModelConfigError
from optim import build_optimizer
from sampling import build_sampler
from similarity import build_similarity

log = logging.getLogger("main")



class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C; `hint` is the command line that continues the run."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint


# --------------------------------------------------------------------------- setup

class TqdmHandler(logging.StreamHandler):
    """Log lines printed above the progress bar (tqdm.write) instead of glued onto it."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a failing handler must not kill the run
            self.handleError(record)


def setup_logging(log_dir: str, rank: int) -> None:
    handlers = [TqdmHandler(sys.stderr)]
    if rank == 0:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(log_dir) / "train.log"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    log.info("device: %s%s", device,
             f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    return device


def load_data(args):
    data_dir = args.data_dir
    if data_dir is None:
        data_dir = ensure_demo_data(args)
    elif not Path(data_dir).is_dir():
        raise DataError(f"--data_dir {data_dir}: the folder does not exist"
                        + ("" if Path(data_dir).parent.is_dir()
                           else f" (nor its parent {Path(data_dir).parent})"))
    data = load_dataset(data_dir, args.cache_dir, args.mm_emb_id, args.on_bad_record)
    if args.eval_protocol == "competition" and data.stats.get("layout") == "v2":
        from layouts.inference_v2 import candidate_item_rids
        data.candidate_items = candidate_item_rids(data_dir)  # rank against candidate/, if any
    return data


def ensure_demo_data(args) -> str:
    """The built-in demo dataset, generated once (deterministically) under .demo_data/."""
    from demo_data import write_demo_dataset
    root = Path(args.cache_dir or ".demo_data")
    path = root / f"demo_u{args.demo_users}_i{args.demo_items}"
    if dist.is_main() and not (path / "seq.jsonl").exists():
        log.info("no --data_dir: generating the demo dataset in %s", path)
        write_demo_dataset(path, num_users=args.demo_users, num_items=args.demo_items, seed=0)
    dist.barrier()
    return str(path)


def make_split(args, data):
    if args.eval_protocol == "leave_one_out":
        return leave_one_out_split(data.seqs)
    if args.eval_protocol == "competition":
        return competition_split(data.seqs)
    return random_user_split(data.seqs, valid_share=0.1, seed=args.seed)


def make_sampler(args, data, split, seed: int):
    """The negatives batch assembly draws: the per-position sampler (the baseline's BCE), or
    the shared negatives of the other losses over it (objective.wrap_sampler)."""
    counts = item_counts(data.seqs, split.train, data.itemnum)
    sampler = build_sampler(data.itemnum, counts, np.asarray(data.item_valid), seed,
                            objective.popularity_negatives(args), args.popular_ratio,
                            args.popularity_source, args.popularity_factor,
                            args.popular_ratio_schedule, args.curriculum_epochs)
    return objective.wrap_sampler(args, sampler, counts)


def feature_tensors(data) -> dict[str, torch.Tensor]:
    t = data.tables
    tables = {name: torch.from_numpy(np.array(getattr(t, name))) for name in
              ("item_sparse", "item_array", "item_continual",
               "user_sparse", "user_array", "user_continual")}
    # multimodal tables stay numpy (memory-mapped): the model gathers a batch's rows on the host
    tables.update({f"mm_{fid}": v for fid, v in t.mm.items()})
    return tables


def build_model(args, schema: dict, tables: dict[str, torch.Tensor], itemnum: int,
                usernum: int) -> BaseModel:
    """The model the flags describe; also rebuilds a trained one from a checkpoint's args."""
    similarity = build_similarity(args.hidden_units, args.use_adaptive_similarity,
                                  args.similarity_types, args.similarity)
    return BaseModel(schema, tables, itemnum, usernum,
                     hidden_units=args.hidden_units, num_blocks=args.num_blocks,
                     num_heads=args.num_heads, dropout_rate=args.dropout_rate, maxlen=args.maxlen,
                     norm_first=args.norm_first, dnn_relu=args.dnn_relu, similarity=similarity,
                     attention_impl=args.attention_impl,
                     sparse_embeddings=args.sparse_embeddings, feature_fusion=args.feature_fusion,
                     init=args.init, positions=args.positions)


def compile_model(model: BaseModel, backend: str = "inductor") -> BaseModel:
    """Compiles the model's __call__ in place (nn.Module.compile): parameters, state_dict keys
    and checkpoints stay those of the eager model. The shapes vary only with the last, partial
    batch of an epoch: one recompilation, then both shapes are cached."""
    model.compile(backend=backend)
    return model


# --------------------------------------------------------------------------- one step

def host_inputs(model, batch: dict[str, np.ndarray], pin: bool) -> dict:
    """The host half of a step's inputs, built ahead of the step by the input workers: the
    batch's arrays as CPU tensors (page-locked when `pin`, so the CUDA copy is asynchronous)
    and, under "item_mm", its multimodal rows gathered from the host tables (None without)."""
    out = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in batch.items()}
    if pin:
        out = {k: t if t.is_pinned() else t.pin_memory() for k, t in out.items()}
    out["item_mm"] = dist.unwrap(model).host_item_mm(batch, pin)
    return out


def to_device(inputs: dict, device: torch.device) -> dict:
    """host_inputs' tensors (or a batch's numpy arrays) onto `device`: non_blocking copies of
    page-locked memory on CUDA (no sync; what is not pinned yet is pinned here)."""
    out = {}
    for k, v in inputs.items():
        if k == "item_mm":
            out[k] = move_item_mm(v, device)
            continue
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(v)
        if device.type == "cuda":
            t = (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
        out[k] = t
    return out


def model_inputs(model, batch: dict[str, np.ndarray], device: torch.device) -> dict:
    """A batch's inputs on `device` in one call (validation, benchmarks): host_inputs then
    to_device. The training loop runs the two halves apart, the first in the input workers."""
    return to_device(host_inputs(model, batch, device.type == "cuda"), device)


def bce_loss(pos_logits, neg_logits, batch) -> torch.Tensor:
    """The baseline's loss: BCE on positives (label 1) and negatives (label 0) over the slots
    whose next token is an item. Masked means instead of boolean indexing, which would sync the
    GPU. A negative of 0 (a user who has every item) is left out of the negative term.
    Training goes through losses.BCE now; this stays as the baseline's reference (tests)."""
    pos_mask = ((batch["next_token_type"] == 1) & (batch["pos"] != 0)).float()
    neg_mask = pos_mask * (batch["neg"] != 0)
    pos_loss = F.binary_cross_entropy_with_logits(pos_logits.float(), torch.ones_like(pos_mask),
                                                  reduction="none")
    neg_loss = F.binary_cross_entropy_with_logits(neg_logits.float(), torch.zeros_like(neg_mask),
                                                  reduction="none")
    return ((pos_loss * pos_mask).sum() / pos_mask.sum().clamp(min=1)
            + (neg_loss * neg_mask).sum() / neg_mask.sum().clamp(min=1))


def compute_loss(model, batch, args, amp_dtype) -> torch.Tensor:
    """The --loss objective of one batch (losses.py; logits and reductions in fp32)."""
    with autocast(batch["seq"].device, amp_dtype):
        loss = objective.objective_loss(model, dist.unwrap(model), batch,
                                        objective.build_objective(args))
    if args.l2_emb:
        loss = loss + args.l2_emb * dist.unwrap(model).item_emb.weight.norm()
    return loss


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- training state

class RunState:
    """Counters and best-so-far values that a checkpoint must carry for an exact resume."""

    def __init__(self):
        self.epoch, self.global_step = 0, 0
        self.best_ndcg, self.best_epoch, self.best_path, self.stale = -1.0, 0, None, 0
        # what chose best_path: valid NDCG@10 when rankings exist, else the lowest valid loss
        self.best_by, self.best_value = None, None
        self.valid_loss, self.history = None, []

    def to_dict(self) -> dict:
        return dict(vars(self))

    def load(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)


def save(args, model, optimizer, sampler, state: RunState, metrics: dict | None, data) -> Path:
    raw = dist.unwrap(model)
    config = {"args": vars(args), "model_params": sum(p.numel() for p in raw.parameters()
                                                      if p.requires_grad),
              # what inference needs to rebuild the model without the training data
              "data": {"schema": data.schema.to_dict(), "itemnum": data.itemnum,
                       "usernum": data.usernum},
              "epoch": state.epoch, "global_step": state.global_step,
              "valid_loss": state.valid_loss, "valid_metrics": metrics,
              "similarity": raw.similarity.scalars(), "run_state": state.to_dict()}
    tensors = {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
               "sampler": json.dumps(sampler.state_dict())}
    return ckpt.save_checkpoint(args.ckpt_dir, tensors, config)


def restore(args, model, optimizer, sampler, state: RunState) -> None:
    path = args.state_dict_path
    if args.resume:
        path = ckpt.latest_checkpoint(args.ckpt_dir)
        if path is None:
            log.info("--resume: no checkpoint in %s yet, starting fresh", args.ckpt_dir)
            return
    if path is None:
        return
    saved = ckpt.load_training_checkpoint(path)
    ckpt.check_compatible(saved["config"]["args"], vars(args), path)
    try:
        dist.unwrap(model).load_state_dict(saved["model"])
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"{path}: weights do not fit this model: "
                                   f"{str(e).splitlines()[0]} ...") from None
    if not args.inference_only:
        try:
            optimizer.load_state_dict(saved["optimizer"])
            sampler.load_state_dict(json.loads(saved["sampler"]))
        except (KeyError, ValueError, TypeError) as e:
            raise ckpt.CheckpointError(
                f"{path}: its optimizer or sampler state does not fit this run ({type(e).__name__}: "
                f"{e}); was it made with another --sparse_embeddings setting?") from None
        state.load(saved["config"]["run_state"])
    log.info("restored %s (epoch %d, step %d)", path, state.epoch, state.global_step)


# --------------------------------------------------------------------------- loop

def train_epoch(model, optimizer, batches, args, device, amp_dtype, writer, state) -> None:
    model.train()
    window, window_steps = torch.zeros((), device=device), 0
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    step_on_device = torch.full((), state.global_step, dtype=torch.long, device=device)
    prepare = functools.partial(host_inputs, model, pin=device.type == "cuda")
    # N workers: N - 1 threads assemble batches ahead, one draws their negatives in order and
    # hands them on, N - 1 prepare them for the step (input_pipeline.py)
    source = batches.epoch(state.epoch, assemblers=assembly_threads(args.input_workers))
    stream = prefetch(source, args.input_workers, prepare=prepare)
    bar = tqdm(stream, total=len(batches), desc=f"epoch {state.epoch}",
               disable=None if dist.is_main() else True, leave=False)
    for i, inputs in enumerate(bar):
        loss = compute_loss(model, to_device(inputs, device), args, amp_dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.global_step += 1
        # Remember the first non-finite step on the device; checked at log cadence (no sync,
        # and no host-to-device copy of the step number either).
        step_on_device += 1
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), step_on_device,
                               bad_step)
        window, window_steps = window + loss.detach(), window_steps + 1
        if state.global_step % args.log_every == 0 or i == len(batches) - 1:
            _check_finite(bad_step)
            log_train(writer, model, state, float(window) / window_steps, bar)
            window, window_steps = torch.zeros((), device=device), 0
    _check_finite(bad_step)


def _check_finite(bad_step: torch.Tensor) -> None:
    step = int(bad_step)
    if step >= 0:
        raise NonFiniteLoss(f"the loss became non-finite at step {step}; the last checkpoint "
                            "is intact (try a lower --lr or --amp none)")


def log_train(writer, model, state, loss: float, bar) -> None:
    bar.set_postfix(loss=f"{loss:.4f}")
    writer.add_scalar("Loss/train", loss, state.global_step)
    log_similarity(writer, model, state.global_step)


def log_start(model, data, split, args, device, amp_dtype, writer) -> None:
    """The untrained model's validation loss and similarity scalars at step 0, so every curve
    starts where training starts."""
    log_similarity(writer, model, 0)
    fixed = make_sampler(args, data, split, seed=10_000 + args.seed)
    loss = validation_loss(dist.unwrap(model), data.seqs, validation_ranges(split), args, device,
                           amp_dtype, fixed)
    writer.add_scalar("Loss/valid", loss, 0)
    log.info("before training: valid loss %.4f", loss)


def log_similarity(writer, model, step: int) -> None:
    # scalars() reads parameters with .item(): a GPU sync, so only at log cadence.
    for name, value in dist.unwrap(model).similarity.scalars().items():
        writer.add_scalar(f"Similarity/{name}", value, step)


@torch.no_grad()
def validation_loss(model, seqs, ranges, args, device, amp_dtype, sampler) -> float:
    """Mean --loss over held-out users (fixed-seed negatives, so epochs compare)."""
    model.eval()
    total, n = torch.zeros((), device=device), 0
    batches = TrainBatches(seqs, ranges, args.maxlen, args.batch_size, sampler, seed=0,
                           shuffle=False)
    for batch in batches.epoch(0):
        total += compute_loss(model, model_inputs(model, batch, device), args, amp_dtype)
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


def log_epoch(writer, sampler, state, seconds: float) -> None:
    for name, value in sampler.epoch_stats().items():
        if not math.isnan(value):
            writer.add_scalar(f"Sampling/{name}", value, state.global_step)
    writer.add_scalar("Time/epoch_seconds", seconds, state.global_step)


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


# --------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        return run_training(args)
    except KeyboardInterrupt:
        raise Interrupted(continue_hint(args, argv)) from None


def run_training(args) -> dict:
    rank, world, local_rank = dist.setup()
    setup_logging(args.log_dir, rank)
    set_seed(args.seed)
    device = resolve_device(args.device, local_rank)
    amp_dtype = AMP_DTYPES[args.amp]
    data = load_data(args)
    split = make_split(args, data)
    sampler = make_sampler(args, data, split, seed=args.seed + 1 + rank)
    model = build_model(args, data.schema.to_dict(), feature_tensors(data), data.itemnum,
                        data.usernum).to(device)
    optimizer = build_optimizer(model, args.lr, args.adam_betas)
    if args.compile:
        compile_model(model)
    check_eval_sampled(args, data)
    if dist.is_main() and not args.inference_only:
        ckpt.prepare_dir(args.ckpt_dir, checkpoint_bytes(model))
    state = RunState()
    restore(args, model, optimizer, sampler, state)
    model = dist.wrap(model, device)
    writer = SummaryWriter(args.tb_dir) if dist.is_main() else dist.NullWriter()
    if dist.is_main():
        Path(args.log_dir, "args.json").write_text(json.dumps(vars(args), indent=2))
        describe_run(writer, args, fresh=state.global_step == 0)
    try:
        if args.inference_only:
            return finish(model, data, split, args, device, amp_dtype, state, writer, train=False)
        batches = TrainBatches(data.seqs, split.train, args.maxlen, args.batch_size, sampler,
                               seed=args.seed, rank=rank, world_size=world)
        log.info("training: %d sequences, %d steps per epoch, %d parameters",
                 len(split.train), len(batches), sum(p.numel() for p in model.parameters()))
        if state.global_step == 0 and dist.is_main():
            log_start(model, data, split, args, device, amp_dtype, writer)
        train(model, optimizer, batches, sampler, data, split, args, device, amp_dtype, state, writer)
        return finish(model, data, split, args, device, amp_dtype, state, writer, train=True)
    finally:
        writer.close()
        dist.cleanup()


def train(model, optimizer, batches, sampler, data, split, args, device, amp_dtype, state,
          writer) -> None:
    epochs = tqdm(range(state.epoch + 1, args.num_epochs + 1), desc="epochs",
                  disable=None if dist.is_main() else True)
    for epoch in epochs:
        state.epoch = epoch
        torch.manual_seed(args.seed * 100_003 + epoch)  # dropout stream depends on (seed, epoch)
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        train_epoch(model, optimizer, batches, args, device, amp_dtype, writer, state)
        stop = False
        if dist.is_main():  # only rank 0 validates, logs and checkpoints
            stop = end_epoch(model, optimizer, sampler, data, split, args, device, amp_dtype,
                             state, writer, time.perf_counter() - start)
        if dist.broadcast_flag(stop, device):
            log.info("early stop: no better valid NDCG@10 for %d rankings", state.stale)
            break


def end_epoch(model, optimizer, sampler, data, split, args, device, amp_dtype, state, writer,
              seconds: float) -> bool:
    """Validate, checkpoint; True when early stopping says stop."""
    log_epoch(writer, sampler, state, seconds)
    raw = dist.unwrap(model)  # rank 0 alone: the DDP wrapper would wait for the other ranks
    metrics = validate(raw, data, split, args, device, amp_dtype, state, writer)
    state.history.append({"epoch": state.epoch, "valid_loss": state.valid_loss,
                          "seconds": seconds,
                          **({"valid_NDCG@10": metrics["NDCG@10"]} if metrics else {})})
    name = ckpt.checkpoint_name(state.epoch, state.global_step)
    stop = track_best(state, metrics, Path(args.ckpt_dir) / name, args.patience)
    if not isinstance(split.valid, Queries):
        track_best_loss(state, Path(args.ckpt_dir) / name)
    save(args, model, optimizer, sampler, state, metrics, data)
    ckpt.prune_checkpoints(args.ckpt_dir, args.keep_checkpoints,
                           keep=(state.best_path,) if state.best_path else ())
    return stop


def finish(model, data, split, args, device, amp_dtype, state, writer, train: bool) -> dict:
    """Final results; with leave_one_out, TEST metrics of the best checkpoint -> metrics.json;
    then the end-of-run summary."""
    result = {"epoch": state.epoch, "global_step": state.global_step,
              "valid_loss": state.valid_loss}
    if not dist.is_main():
        return result
    results = None
    if split.test is not None:
        results = final_test(model, data, split, args, device, amp_dtype, state, train)
        writer.add_scalar("Test/HR@10", results["test"]["HR@10"], state.global_step)
        writer.add_scalar("Test/NDCG@10", results["test"]["NDCG@10"], state.global_step)
        out = {**results, "best_epoch": state.best_epoch,
               "best_checkpoint": str(Path(args.ckpt_dir) / state.best_path) if state.best_path else None,
               "history": state.history}
        _write_json_atomically(Path(args.log_dir) / "metrics.json", out)
        result = {**result, **out}
    tb_meta.write_hparams_end(writer)
    report_end(args, state, results)
    return result


def final_test(model, data, split, args, device, amp_dtype, state, train: bool) -> dict:
    """{"valid": metrics, "test": metrics} of the best checkpoint (of the loaded one when not
    training)."""
    if train and state.best_path:
        best = best_checkpoint(Path(args.ckpt_dir), state)
        if best is not None:
            dist.unwrap(model).load_state_dict(ckpt.load_checkpoint(best)["model"])
    return {"valid": run_evaluation(model, data, split.valid, args, device, amp_dtype),
            "test": run_evaluation(model, data, split.test, args, device, amp_dtype)}


def describe_run(writer, args, fresh: bool) -> None:
    """HParams entry of this run (its flags; metrics filled as they are logged) and, at a
    fresh start, the legend of its TensorBoard tags."""
    defaults = {a.dest: a.default for a in build_parser()._actions if a.dest != "help"}
    tb_meta.write_hparams_start(writer, args, defaults)
    if fresh:
        writer.add_text("Legend", tb_meta.legend(args), 0)


def report_end(args, state, results: dict | None) -> dict:
    """Print the end-of-run summary, append it to train.log, write summary.json."""
    logdir = run_folders.tensorboard_logdir(args.tb_dir, args.run_name)
    info = run_summary.summary_info(args, state, results, logdir)
    text = run_summary.summary_text(info, args.eval_protocol)
    for handler in logging.getLogger().handlers:
        handler.flush()
    print(text, flush=True)
    run_summary.write_summary(info, text)
    return info


def continue_hint(args, argv: list[str]) -> str:
    """What to type to continue this run (printed when it is interrupted)."""
    has_checkpoint = ckpt.latest_checkpoint(args.ckpt_dir) is not None
    command = run_folders.continue_command(argv, args.run_name, has_checkpoint)
    if has_checkpoint:
        return f"continue this run with: {command}"
    return f"no checkpoint of this run yet; start it again with: {command}"


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


def checkpoint_bytes(model) -> int:
    """About one checkpoint's size: the weights and Adam's two moments per parameter."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def check_eval_sampled(args, data) -> None:
    """--eval_sampled N needs N items outside every user's history and target (conservatively:
    outside the user's whole line); found now, not after the first epoch."""
    if not args.eval_sampled:
        return
    seqs = data.seqs
    items = np.asarray(seqs.tok_type) == 1
    line = np.repeat(np.arange(seqs.num_lines), np.diff(np.asarray(seqs.line_offsets)))
    pairs = np.unique(line[items].astype(np.int64) * (data.itemnum + 1)
                      + np.asarray(seqs.tok_id)[items])
    distinct = np.bincount(pairs // (data.itemnum + 1), minlength=seqs.num_lines)
    allowed = data.itemnum - int(distinct.max()) if len(distinct) else data.itemnum
    if args.eval_sampled > allowed:
        raise DataError(f"--eval_sampled {args.eval_sampled}: the catalogue has {data.itemnum} "
                        f"items and the longest history {int(distinct.max())} distinct ones, so at "
                        f"most {max(allowed, 0)} negatives can be drawn for every user")


def _write_json_atomically(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def cli() -> int:
    try:
        main()
        return 0
    except (DataError, ModelConfigError, ckpt.CheckpointError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        hint = getattr(e, "hint", "run the same command again")
        print(f"interrupted: {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
