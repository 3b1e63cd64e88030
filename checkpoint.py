"""Self-describing checkpoints, written atomically and loaded without running code.

One folder per checkpoint (`epoch003_step000450/`) holding `model.pt` (weights, optimizer, sampler
and step counters) and `config.json` (args, model_params, epoch, global_step, valid_loss, metrics,
similarity scalars). The folder is written under a temporary name and renamed, so a crash never
leaves half a checkpoint where a resume would look.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

WEIGHTS, CONFIG = "model.pt", "config.json"
# Flags that change the shapes or the function of the model: a checkpoint must agree on them.
ARCHITECTURE_KEYS = ("hidden_units", "num_blocks", "num_heads", "maxlen", "norm_first",
                     "dnn_relu", "feature_fusion", "positions",
                     "use_adaptive_similarity", "similarity_types", "similarity", "mm_emb_id")


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or made for another configuration."""


def checkpoint_name(epoch: int, global_step: int) -> str:
    return f"epoch{epoch:03d}_step{global_step:09d}"


def save_checkpoint(ckpt_dir: str | Path, state: dict, config: dict) -> Path:
    """Write state (tensors, via torch.save) and config (JSON) as one folder; returns it."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / checkpoint_name(config["epoch"], config["global_step"])
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-" + final.name, dir=ckpt_dir))
    try:
        torch.save({**state, "config": config}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _fsync_dir(path: Path) -> None:
    for p in [*path.iterdir(), path] if path.is_dir() else [path]:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def resolve(path: str | Path) -> Path:
    """A checkpoint folder or its model.pt -> the model.pt path."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    return path


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder in ckpt_dir (by epoch and step), or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    done = [p for p in ckpt_dir.iterdir()
            if p.is_dir() and p.name.startswith("epoch") and (p / CONFIG).exists()
            and (p / WEIGHTS).exists()]
    return max(done, key=lambda p: p.name, default=None)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The saved dict; weights_only=True so a checkpoint cannot run code."""
    path = resolve(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def check_compatible(saved_args: dict, args: dict, path) -> None:
    """Fail with the first architecture flag on which the checkpoint and this run differ."""
    for key in ARCHITECTURE_KEYS:
        if key in saved_args and key in args and _norm(saved_args[key]) != _norm(args[key]):
            raise CheckpointError(f"{path}: made with --{key} {saved_args[key]!r}, this run has "
                                  f"--{key} {args[key]!r}; pass the same value or another checkpoint")


def _norm(value):
    return list(value) if isinstance(value, tuple) else value
