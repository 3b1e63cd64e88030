"""Self-describing checkpoints, written atomically and loaded without running code.

One folder per checkpoint (`epoch003_step000450/`) holding `model.pt` (weights, optimizer, sampler
and step counters) and `config.json` (args, model_params, epoch, global_step, valid_loss, metrics,
similarity scalars). The folder is written under a temporary name and renamed, so a crash never
leaves half a checkpoint where a resume would look; `prepare_dir` removes the temporary folders of
killed writers and checks, before training, that the folder can take a checkpoint. Checkpoints are
ordered by the epoch and step their config.json records, not by folder name.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import torch

from run_files import tempdirs
log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"

WEIGHTS, CONFIG = "model.pt", "config.json"
# Flags that change the shapes or the function of the model: a checkpoint must agree on them.
ARCHITECTURE_KEYS = ("hidden_units", "num_blocks", "num_heads", "maxlen", "norm_first", "block",
                     "dnn_relu", "feature_fusion", "positions", "output_embedding",
                     "use_adaptive_similarity", "similarity_types", "similarity", "mm_emb_id")


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or made for another configuration."""


def checkpoint_name(epoch: int, global_step: int) -> str:
    return f"epoch{epoch:03d}_step{global_step:09d}"


def save_checkpoint(ckpt_dir: str | Path, state: dict, config: dict) -> Path:
    """Write state (tensors, via torch.save) and config (JSON) as one folder; returns it."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / checkpoint_name(config["epoch"], config["global_step"])
    tmp = None
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = tempdirs.make_temp_dir(ckpt_dir, TMP_PREFIX, final.name)
        torch.save({**state, "config": config}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError | RuntimeError):  # torch's writer reports ENOSPC as RuntimeError
            raise CheckpointError(_write_failure(final, e)) from None
        raise
    return final


def _write_failure(final: Path, e: BaseException) -> str:
    """One line for a failed write: a full disk said as such, not as inline_container.cc."""
    free = _free_bytes(final.parent)
    full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        (free is not None and free < 1 << 20) or "No space left" in str(e)
    reason = (f"no space left on the device ({_mb(free)} free)" if full else
              f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
    return f"{final}: could not write the checkpoint ({reason}); earlier checkpoints are intact"


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _mb(n: int | None) -> str:
    return "? MB" if n is None else f"{n / 2**20:.1f} MB"


def prepare_dir(ckpt_dir: str | Path, needed_bytes: int = 0) -> None:
    """Before training: create ckpt_dir, remove killed writers' temporary folders, and check that
    a file can be written there and that about `needed_bytes` are free (one checkpoint), so an
    unwritable folder or a full disk stops the run now, not after the first epoch."""
    ckpt_dir = Path(ckpt_dir)
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tempdirs.remove_stale(ckpt_dir, TMP_PREFIX)
        probe = tempdirs.make_temp_dir(ckpt_dir, TMP_PREFIX, "probe")
        try:
            with open(probe / "probe", "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as e:
        raise CheckpointError(f"--ckpt_dir {ckpt_dir}: cannot write checkpoints there "
                              f"({e.strerror or type(e).__name__}: {e.filename or ckpt_dir})") from None
    free = _free_bytes(ckpt_dir)
    if free is not None and free < needed_bytes:
        raise CheckpointError(f"--ckpt_dir {ckpt_dir}: a checkpoint needs about {_mb(needed_bytes)} "
                              f"but the disk has {_mb(free)} free")


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
    """The newest complete checkpoint folder in ckpt_dir, by the (epoch, global_step) its
    config.json records (folder names sort wrongly past epoch 999), or None."""
    recorded = recorded_checkpoints(ckpt_dir)
    return max(recorded, key=lambda p: recorded[p][:2], default=None)


def recorded_checkpoints(ckpt_dir: str | Path) -> dict[Path, tuple[int, int, dict]]:
    """Complete checkpoint folders -> (epoch, global_step, config) from their config.json;
    folders whose config.json cannot be read are left out with a warning."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return {}
    out = {}
    for p in ckpt_dir.iterdir():
        if not (p.is_dir() and p.name.startswith("epoch") and (p / CONFIG).exists()
                and (p / WEIGHTS).exists()):
            continue
        try:
            config = json.loads((p / CONFIG).read_text())
            epoch, step = int(config["epoch"]), int(config["global_step"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: unreadable %s (%s): not considered", p, CONFIG, type(e).__name__)
            continue
        out[p] = (epoch, step, config)
    return out


def best_existing(ckpt_dir: str | Path, metric: str = "NDCG@10") -> Path | None:
    """The existing checkpoint with the highest recorded valid `metric` (ties: the earliest),
    or None when none records it."""
    scored = [(cfg["valid_metrics"][metric], -epoch, -step, p)
              for p, (epoch, step, cfg) in recorded_checkpoints(ckpt_dir).items()
              if isinstance(cfg.get("valid_metrics"), dict)
              and isinstance(cfg["valid_metrics"].get(metric), int | float)]
    return max(scored, key=lambda t: t[:3])[3] if scored else None


def load_training_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint of main.py (weights and config with args), or CheckpointError; a plain
    state_dict (the original baseline's model.pt) is named as such. mmap: see load_checkpoint."""
    saved = load_checkpoint(path, map_location, mmap)
    config = saved.get("config") if isinstance(saved, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict) \
            or not isinstance(saved.get("model"), dict):
        kind = ("a plain state_dict (weights only, e.g. the original baseline's model.pt)"
                if isinstance(saved, dict) and saved and
                all(isinstance(v, torch.Tensor) for v in saved.values()) else
                f"a {type(saved).__name__} without model weights and config args")
        raise CheckpointError(f"{path}: not a training checkpoint of main.py but {kind}; "
                              "pass a checkpoint folder that main.py wrote")
    return saved


def load_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """The saved dict; weights_only=True so a checkpoint cannot run code. mmap=True maps the
    file instead of reading it: a reader that takes only the weights never reads the
    optimizer state (two thirds of the file under Adam) into memory. Files in torch's legacy
    (non-zip) format cannot be mapped and are read whole."""
    path = resolve(path)
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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


def complete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Every complete checkpoint folder in ckpt_dir, oldest first (by recorded epoch and step)."""
    recorded = recorded_checkpoints(ckpt_dir)
    return sorted(recorded, key=lambda p: recorded[p][:2])


def prune_checkpoints(ckpt_dir: str | Path, keep_last: int, keep: tuple[str, ...] = ()) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and those named in `keep` (folder names,
    e.g. the best one); keep_last 0 keeps everything. Returns the deleted folders.

    The newest is never deleted, so `--resume` always finds the checkpoint it would have found."""
    if keep_last <= 0:
        return []
    done = complete_checkpoints(ckpt_dir)
    old = [p for p in done[:-keep_last] if p.name not in set(keep)]
    for p in old:
        # rename first: a crash mid-delete leaves a hidden folder, never a half checkpoint that
        # a resume could pick
        hidden = p.with_name(".tmp-deleting-" + p.name)
        os.replace(p, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    return old
