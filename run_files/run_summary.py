"""The end-of-run summary: where the run's files are, which checkpoint is best, the final metrics,
and the command that shows the run in TensorBoard (always the last line).

Printed to stdout, appended verbatim to train.log, and kept as `summary.json` beside it (whose
presence marks the run finished for `--resume`, see run_files/run_folders.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from evaluation.evaluate import format_table
from run_files.run_folders import SUMMARY


def run_folder(log_dir: str, tb_dir: str, ckpt_dir: str) -> str | None:
    """The folder holding the run's three folders, None when they share none below the cwd."""
    try:
        common = os.path.commonpath([os.path.abspath(p) for p in (log_dir, tb_dir, ckpt_dir)])
    except ValueError:  # different drives
        return None
    if common in (os.path.abspath("."), os.path.abspath(os.sep)):
        return None
    return os.path.relpath(common) if not os.path.relpath(common).startswith("..") else common


def summary_info(args, state, results: dict | None, tb_logdir: str) -> dict:
    """What the summary says, as JSON-ready values (also written to summary.json)."""
    best = str(Path(args.ckpt_dir) / state.best_path) if state.best_path else None
    if getattr(args, "inference_only", False):
        best = str(args.state_dict_path)  # the evaluated checkpoint
    return {"run_name": args.run_name,
            "run_folder": run_folder(args.log_dir, args.tb_dir, args.ckpt_dir),
            "log_dir": args.log_dir, "tb_dir": args.tb_dir, "ckpt_dir": args.ckpt_dir,
            "epochs": state.epoch, "global_step": state.global_step,
            "best_checkpoint": best, "best_epoch": state.best_epoch if best else None,
            "best_by": getattr(state, "best_by", None), "best_value": getattr(state, "best_value", None),
            "valid_loss": state.valid_loss, "metrics": results,
            "tensorboard": f"tensorboard --logdir {tb_logdir}"}


def summary_text(info: dict, eval_protocol: str) -> str:
    """Human-readable summary; its last line is exactly `tensorboard --logdir <dir>`."""
    lines = [f"run finished: {info['epochs']} epochs, {info['global_step']} steps"]
    if info["run_folder"]:
        lines.append(f"run folder:      {info['run_folder']}")
    lines += [f"log:             {Path(info['log_dir']) / 'train.log'}",
              f"checkpoints:     {info['ckpt_dir']}"]
    if info["best_checkpoint"] and info["best_by"] is None:
        lines.append(f"checkpoint:      {info['best_checkpoint']}")
    elif info["best_checkpoint"]:
        lines.append(f"best checkpoint: {info['best_checkpoint']} (epoch {info['best_epoch']}, "
                     f"{info['best_by']} {info['best_value']:.4f})")
    else:
        lines.append("best checkpoint: none (no epoch finished)")
    if info["metrics"]:
        lines += ["", "metrics of the best checkpoint (valid: chose it; test: held out):",
                  format_table(info["metrics"]), "",
                  f"metrics file:    {Path(info['log_dir']) / 'metrics.json'}"]
    elif eval_protocol != "leave_one_out":
        lines.append(f"no ranking metrics with --eval_protocol {eval_protocol} (validation loss "
                     "only); --eval_protocol leave_one_out adds HR@10, NDCG@10 and a test split")
    lines += ["", "to look at the run in TensorBoard:", info["tensorboard"]]
    return "\n".join(lines)


def write_summary(info: dict, text: str) -> None:
    """Append the text to train.log and write summary.json (atomically: it marks the run done)."""
    log_dir = Path(info["log_dir"])
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "train.log", "a") as f:
        f.write(text + "\n")
    tmp = log_dir / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, log_dir / SUMMARY)
