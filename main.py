"""Train the TAAC 2025 baseline model: `python main.py [--data_dir DIR] [flags]`.

The run reads top to bottom here; its parts are in training/: flags (training/flags.py) -> run
folders and logging -> seed and device -> data, split, sampler, model, optimizer
(training/setup.py) -> resume (training/run_state.py) -> loop: train an epoch (training/step.py),
validate and checkpoint (training/validation.py) -> final test of the best checkpoint.
`main(argv)` returns the final results so tests can call it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dataset import DataError
from inputs.batching import Queries, TrainBatches
from model import ModelConfigError
from run_files import checkpoint as ckpt
from run_files import run_folders, run_summary, tb_meta
from training import distributed as dist
from training import run_state, setup, step, validation
from training.flags import AMP_DTYPES, build_parser, parse_args
from training.optim import build_optimizer

log = logging.getLogger("main")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C; `hint` is the command line that continues the run."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        return run_training(args)
    except KeyboardInterrupt:
        raise Interrupted(continue_hint(args, argv)) from None


def run_training(args) -> dict:
    rank, world, local_rank = dist.setup()
    setup.setup_logging(args.log_dir, rank)
    setup.set_seed(args.seed)
    device = setup.resolve_device(args.device, local_rank)
    amp_dtype = AMP_DTYPES[args.amp]
    data = setup.load_data(args)
    split = setup.make_split(args, data)
    sampler = setup.make_sampler(args, data, split, seed=args.seed + 1 + rank)
    model = setup.build_model(args, data.schema.to_dict(), setup.feature_tensors(data), data.itemnum,
                        data.usernum).to(device)
    optimizer = build_optimizer(model, args.lr, args.adam_betas)
    if args.compile:
        setup.compile_model(model)
    setup.check_eval_sampled(args, data)
    if dist.is_main() and not args.inference_only:
        ckpt.prepare_dir(args.ckpt_dir, setup.checkpoint_bytes(model))
    state = run_state.RunState()
    run_state.restore(args, model, optimizer, sampler, state)
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
            validation.log_start(model, data, split, args, device, amp_dtype, writer)
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
        step.train_epoch(model, optimizer, batches, args, device, amp_dtype, writer, state)
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
    metrics = validation.validate(raw, data, split, args, device, amp_dtype, state, writer)
    state.history.append({"epoch": state.epoch, "valid_loss": state.valid_loss,
                          "seconds": seconds,
                          **({"valid_NDCG@10": metrics["NDCG@10"]} if metrics else {})})
    name = ckpt.checkpoint_name(state.epoch, state.global_step)
    stop = validation.track_best(state, metrics, Path(args.ckpt_dir) / name, args.patience)
    if not isinstance(split.valid, Queries):
        validation.track_best_loss(state, Path(args.ckpt_dir) / name)
    run_state.save(args, model, optimizer, sampler, state, metrics, data)
    ckpt.prune_checkpoints(args.ckpt_dir, args.keep_checkpoints,
                           keep=(state.best_path,) if state.best_path else ())
    return stop


def log_epoch(writer, sampler, state, seconds: float) -> None:
    for name, value in sampler.epoch_stats().items():
        if not math.isnan(value):
            writer.add_scalar(f"Sampling/{name}", value, state.global_step)
    writer.add_scalar("Time/epoch_seconds", seconds, state.global_step)


def finish(model, data, split, args, device, amp_dtype, state, writer, train: bool) -> dict:
    """Final results; with leave_one_out, TEST metrics of the best checkpoint -> metrics.json;
    then the end-of-run summary."""
    result = {"epoch": state.epoch, "global_step": state.global_step,
              "valid_loss": state.valid_loss}
    if not dist.is_main():
        return result
    results = None
    if split.test is not None:
        results = validation.final_test(model, data, split, args, device, amp_dtype, state, train)
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


def _write_json_atomically(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def cli() -> int:
    try:
        main()
        return 0
    except (DataError, ModelConfigError, ckpt.CheckpointError, step.NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        hint = getattr(e, "hint", "run the same command again")
        print(f"interrupted: {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
