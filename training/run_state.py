"""What a checkpoint carries for an exact resume: the counters and best-so-far values
(`RunState`), and saving / restoring them with the weights, optimizer and sampler."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from run_files import checkpoint as ckpt
from training import distributed as dist

log = logging.getLogger("main")

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

