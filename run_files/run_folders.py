"""Run folders under runs/: default names, finding the run `--resume` continues, the command that
continues an interrupted run, and the marker that says a run finished.

A run folder `runs/<run_name>/` holds the TensorBoard events (so `tensorboard --logdir runs` names
each run after its folder), `log/` (train.log, args.json, metrics.json, summary.json) and `ckpt/`.
A run is finished once `log/summary.json` exists (written by the end-of-run summary); a run with
a checkpoint and no summary was interrupted, and `--resume` without a run name continues the one
whose newest checkpoint is the most recent.
"""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from run_files import checkpoint as ckpt
RUNS_ROOT = Path("runs")
SUMMARY = "summary.json"
# the folders a run name places under runs/<run_name>/ (the TensorBoard events sit in the run
# folder itself, so TensorBoard names the run after it)
DEFAULT_SUBDIRS = {"log_dir": "log", "tb_dir": "", "ckpt_dir": "ckpt"}


def default_run_name(data_dir: str | None) -> str:
    """'<data folder name>-<YYYYmmdd-HHMMSS>', 'demo-...' for the built-in demo data."""
    stem = Path(data_dir).name if data_dir else "demo"
    return f"{stem or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}"


def default_dir(run_name: str, dest: str, root: Path = RUNS_ROOT) -> str:
    """The folder of `dest` (log_dir, tb_dir, ckpt_dir) for a run named run_name."""
    return str(root / run_name / DEFAULT_SUBDIRS[dest])


def is_finished(log_dir: str | Path) -> bool:
    return (Path(log_dir) / SUMMARY).is_file()


def latest_unfinished_run(root: Path = RUNS_ROOT) -> str | None:
    """The name of the run under root whose newest checkpoint is the most recent, among runs
    with a checkpoint and no end-of-run summary; None when there is none."""
    best, best_time = None, -1.0
    if not root.is_dir():
        return None
    for run in root.iterdir():
        if not run.is_dir() or is_finished(default_dir(run.name, "log_dir", root)):
            continue
        latest = ckpt.latest_checkpoint(default_dir(run.name, "ckpt_dir", root))
        if latest is not None and latest.stat().st_mtime > best_time:
            best, best_time = run.name, latest.stat().st_mtime
    return best


def saved_args(log_dir: str | Path) -> dict:
    """The flags a run was started with (args.json in its log folder), {} when it has none or
    the file is unreadable (then the flags given now, or the defaults, apply)."""
    try:
        return json.loads((Path(log_dir) / "args.json").read_text())
    except (OSError, ValueError):
        return {}


def continue_command(argv: list[str], run_name: str, has_checkpoint: bool) -> str:
    """The command line that continues this run: the same flags, its run name, and --resume
    (in place of --state_dict_path, which only seeded the first start) once a checkpoint of the
    run exists. argv: the flags the run was started with (without the program name)."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if has_checkpoint and (a == "--state_dict_path" or a.startswith("--state_dict_path=")):
            skip = a == "--state_dict_path"
            continue
        out.append(a)
    if not any(a == "--run_name" or a.startswith("--run_name=") for a in out):
        out += ["--run_name", run_name]
    if has_checkpoint and "--resume" not in out:
        out.append("--resume")
    return shlex.join(["python", "main.py", *out])


def tensorboard_logdir(tb_dir: str, run_name: str, root: Path = RUNS_ROOT) -> str:
    """The --logdir to show this run: runs/ when the run uses the default folder (every run
    side by side, each named after its run name), else the --tb_dir given."""
    if Path(tb_dir) == Path(default_dir(run_name, "tb_dir", root)):
        return str(root)
    return str(tb_dir)
